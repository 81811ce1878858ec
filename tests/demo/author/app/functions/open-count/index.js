// Counts the caller's open todos. It asks the data API with the caller's own token, so row-level
// security shows it only their rows.
Deno.serve(async (req) => {
  const auth = req.headers.get('authorization');
  if (!auth) return Response.json({ error: 'sign in first' }, { status: 401 });
  const url = `${Deno.env.get('SUPABASE_URL')}/rest/v1/todos?select=id&done=is.false`;
  const r = await fetch(url, { headers: { apikey: Deno.env.get('SUPABASE_ANON_KEY'), authorization: auth } });
  if (!r.ok) return Response.json({ error: await r.text() }, { status: 502 });
  const rows = await r.json();
  return Response.json({ open: rows.length });
});
