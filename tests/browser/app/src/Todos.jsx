import { useEffect, useState } from 'react';
import { supabase } from './supabase.js';

// Row-level security limits `todos` to the signed-in user's rows; the app filters nothing itself.
export default function Todos({ session }) {
  const [todos, setTodos] = useState(null);
  const [title, setTitle] = useState('');
  const [error, setError] = useState(null);

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
    return () => {
      current = false;
    };
  }, [session.user.id]);

  async function add(event) {
    event.preventDefault();
    const { data, error } = await supabase.from('todos').insert({ title }).select('id, title, done').single();
    if (error) return setError(error.message);
    setTodos((list) => [...(list ?? []), data]);
    setTitle('');
  }

  async function toggle(todo) {
    const { error } = await supabase.from('todos').update({ done: !todo.done }).eq('id', todo.id);
    if (error) return setError(error.message);
    setTodos((list) => list.map((t) => (t.id === todo.id ? { ...t, done: !t.done } : t)));
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
    </section>
  );
}
