import { createClient } from '@supabase/supabase-js';

// The env's APIs (/rest/v1, /auth/v1, /storage/v1, /functions/v1) are served on the published site's
// own origin. The publishable key (safe in a browser) is written to .env.local by the platform.
const url = import.meta.env.VITE_SUPABASE_URL || window.location.origin;
const key = import.meta.env.VITE_SUPABASE_ANON_KEY;

export const supabase = createClient(url, key);
