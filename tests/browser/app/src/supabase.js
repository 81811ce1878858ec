import { createClient } from '@supabase/supabase-js';

// vibebase serves the env's APIs (/rest/v1, /auth/v1, ...) on the site's own origin, so the deployed
// app needs no API URL; VITE_SUPABASE_URL points `vite dev` at an env instead.
const url = import.meta.env.VITE_SUPABASE_URL || window.location.origin;
const anonKey = import.meta.env.VITE_SUPABASE_ANON_KEY;

export const supabase = createClient(url, anonKey);
