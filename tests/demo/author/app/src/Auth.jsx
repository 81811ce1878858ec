import { useState } from 'react';
import { supabase } from './supabase.js';

export default function Auth() {
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  async function submit(event, mode) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    const credentials = { email, password };
    const { error } =
      mode === 'sign-up'
        ? await supabase.auth.signUp(credentials)
        : await supabase.auth.signInWithPassword(credentials);
    if (error) setError(error.message);
    setBusy(false);
  }

  return (
    <form onSubmit={(e) => submit(e, 'sign-in')}>
      <input
        type="email"
        placeholder="Email"
        autoComplete="email"
        value={email}
        onChange={(e) => setEmail(e.target.value)}
        required
      />
      <input
        type="password"
        placeholder="Password"
        autoComplete="current-password"
        value={password}
        onChange={(e) => setPassword(e.target.value)}
        required
      />
      <button type="submit" disabled={busy}>
        Sign in
      </button>
      <button type="button" disabled={busy} onClick={(e) => submit(e, 'sign-up')}>
        Sign up
      </button>
      {error && <p role="alert">{error}</p>}
    </form>
  );
}
