import { useCallback, useEffect, useState } from 'react';
import { supabase } from './supabase.js';

// Row-level security limits `todos` to the signed-in user's rows; the app filters nothing itself.
export default function Todos({ session }) {
  const [todos, setTodos] = useState(null);
  const [open, setOpen] = useState(null);
  const [title, setTitle] = useState('');
  const [error, setError] = useState(null);

  // The open count comes from the `open-count` function, which sees the same rows as this user.
  const countOpen = useCallback(async () => {
    const { data, error } = await supabase.functions.invoke('open-count');
    if (error) setError(error.message);
    else setOpen(data.open);
  }, []);

  useEffect(() => {
    let current = true;
    supabase
      .from('todos')
      .select('id, title, done')
      .order('id')
      .then(({ data, error }) => {
        if (!current) return;
        if (error) setError(error.message);
        else setTodos(data);
      });
    countOpen();
    return () => {
      current = false;
    };
  }, [session.user.id, countOpen]);

  async function add(event) {
    event.preventDefault();
    const { data, error } = await supabase.from('todos').insert({ title }).select('id, title, done').single();
    if (error) return setError(error.message);
    setTodos((list) => [...(list ?? []), data]);
    setTitle('');
    countOpen();
  }

  async function toggle(todo) {
    const { error } = await supabase.from('todos').update({ done: !todo.done }).eq('id', todo.id);
    if (error) return setError(error.message);
    setTodos((list) => list.map((t) => (t.id === todo.id ? { ...t, done: !t.done } : t)));
    countOpen();
  }

  return (
    <section>
      <p>
        Signed in as <span data-testid="user">{session.user.email}</span>{' '}
        <button onClick={() => supabase.auth.signOut()}>Sign out</button>
      </p>
      <form onSubmit={add}>
        <input placeholder="What needs doing?" value={title} onChange={(e) => setTitle(e.target.value)} required />
        <button type="submit">Add</button>
      </form>
      {error && <p role="alert">{error}</p>}
      {todos === null ? (
        <p>Loading…</p>
      ) : todos.length === 0 ? (
        <p>Nothing to do yet.</p>
      ) : (
        <ul>
          {todos.map((todo) => (
            <li key={todo.id}>
              <label>
                <input type="checkbox" checked={todo.done} onChange={() => toggle(todo)} /> {todo.title}
              </label>
            </li>
          ))}
        </ul>
      )}
      <p data-testid="open-count">{open === null ? '…' : `${open} open`}</p>
    </section>
  );
}
