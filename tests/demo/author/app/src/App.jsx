import { useEffect, useState } from 'react';
import { supabase } from './supabase.js';
import Auth from './Auth.jsx';
import Todos from './Todos.jsx';

export default function App() {
  const [session, setSession] = useState(null);
  const [loading, setLoading] = useState(true);

  useEffect(() => {
    supabase.auth.getSession().then(({ data }) => {
      setSession(data.session);
      setLoading(false);
    });
    const { data } = supabase.auth.onAuthStateChange((_event, next) => setSession(next));
    return () => data.subscription.unsubscribe();
  }, []);

  return (
    <main>
      <h1>Todos</h1>
      {loading ? <p>Loading…</p> : session ? <Todos key={session.user.id} session={session} /> : <Auth />}
    </main>
  );
}
