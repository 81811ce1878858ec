//! The PostgREST query language: `select`, filters (with `or`/`and`/`not` nesting), `order`, `limit`,
//! `offset`, `on_conflict`, `columns`. Parsing only; [`crate::sqlgen`] turns the result into SQL with
//! every identifier quoted and every value bound.

/// How deep `or=(…and(…or(…)))` may nest.
pub const MAX_LOGIC_DEPTH: usize = 8;
/// How deep embedded resources may nest.
pub const MAX_EMBED_DEPTH: usize = 6;
/// Longest identifier accepted (PostgreSQL's limit).
const MAX_IDENT: usize = 63;

/// A query-language error: PostgREST's `PGRST100` (or another `PGRST…` code).
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub code: &'static str,
    pub message: String,
    pub details: Option<String>,
}

fn perr(message: impl Into<String>, details: impl Into<String>) -> ParseError {
    ParseError { code: "PGRST100", message: message.into(), details: Some(details.into()) }
}

/// One step of a JSON path: `->key` (JSON) or `->>key` (text).
#[derive(Debug, Clone, PartialEq)]
pub struct PathStep {
    pub key: String,
    pub text: bool,
}

/// A column reference with an optional JSON path: `data->a->>b`.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub column: String,
    pub path: Vec<PathStep>,
}

impl Field {
    /// The key PostgREST gives this field in the output: the last path key, or the column.
    pub fn output_name(&self) -> &str {
        self.path.last().map_or(&self.column, |p| &p.key)
    }
}

/// One item of `select`.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectItem {
    /// `*`
    Star,
    /// `alias:field::cast`
    Field { alias: Option<String>, field: Field, cast: Option<String> },
    /// `alias:relation!hint!inner(…)`
    Embed(Embed),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Embed {
    pub alias: Option<String>,
    pub relation: String,
    /// `!fk_name` or `!column` to pick among several relationships.
    pub hint: Option<String>,
    /// `!inner`: only parents that have a match.
    pub inner: bool,
    pub select: Vec<SelectItem>,
}

/// A filter operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    Like,
    Ilike,
    Is,
    In,
    Cs,
    Cd,
}

impl Op {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "eq" => Self::Eq,
            "neq" => Self::Neq,
            "gt" => Self::Gt,
            "gte" => Self::Gte,
            "lt" => Self::Lt,
            "lte" => Self::Lte,
            "like" => Self::Like,
            "ilike" => Self::Ilike,
            "is" => Self::Is,
            "in" => Self::In,
            "cs" => Self::Cs,
            "cd" => Self::Cd,
            _ => return None,
        })
    }
}

/// The right-hand side of a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Value(String),
    List(Vec<String>),
    /// `is.null`, `is.true`, `is.false`, `is.unknown`
    Is(IsValue),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsValue {
    Null,
    NotNull,
    True,
    False,
    Unknown,
}

/// A filter condition tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Leaf { field: Field, op: Op, negated: bool, operand: Operand },
    And { negated: bool, items: Vec<Cond> },
    Or { negated: bool, items: Vec<Cond> },
}

/// One `order` term.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderTerm {
    pub field: Field,
    pub desc: bool,
    /// `Some(true)` = NULLS FIRST.
    pub nulls_first: Option<bool>,
}

/// Filters, order and paging that apply to one resource (the root, or an embed by its path).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    pub conds: Vec<Cond>,
    pub order: Vec<OrderTerm>,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
}

/// A parsed query string.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    pub select: Vec<SelectItem>,
    /// Key: embed path (`""` for the root, `"author"`, `"author.posts"`).
    pub scopes: std::collections::BTreeMap<String, Scope>,
    pub on_conflict: Option<Vec<String>>,
    pub columns: Option<Vec<String>>,
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space).
pub fn percent_decode(s: &str) -> Result<String, ParseError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(|| perr("invalid percent-encoding", s))?;
                let hex = std::str::from_utf8(hex).map_err(|_| perr("invalid percent-encoding", s))?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| perr("invalid percent-encoding", s))?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let s = String::from_utf8(out).map_err(|_| perr("query is not UTF-8", ""))?;
    if s.contains('\0') {
        return Err(perr("NUL characters are not allowed", ""));
    }
    Ok(s)
}

/// Validates an identifier: non-empty, at most 63 bytes, no NUL. (It is always quoted in SQL.)
pub fn ident(s: &str) -> Result<String, ParseError> {
    let s = s.trim();
    if s.is_empty() || s.len() > MAX_IDENT || s.contains('\0') {
        return Err(perr("invalid identifier", s.to_owned()));
    }
    Ok(s.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(s).to_owned())
}

/// Splits at `sep` outside parentheses and double quotes.
fn split_top(s: &str, sep: char) -> Result<Vec<String>, ParseError> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut quoted = false;
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                continue;
            }
            '"' => quoted = !quoted,
            '(' | '{' | '[' if !quoted => depth += 1,
            ')' | '}' | ']' if !quoted => {
                depth = depth.checked_sub(1).ok_or_else(|| perr("unbalanced parentheses", s.to_owned()))?;
            }
            c if c == sep && !quoted && depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if depth != 0 || quoted {
        return Err(perr("unbalanced parentheses or quotes", s.to_owned()));
    }
    out.push(cur);
    Ok(out)
}

/// `col`, `col->a->>b`, `col->0`.
pub fn parse_field(s: &str) -> Result<Field, ParseError> {
    let s = s.trim();
    let first = s.find("->").unwrap_or(s.len());
    let column = ident(&s[..first])?;
    let mut path = Vec::new();
    let mut rest = &s[first..];
    while !rest.is_empty() {
        let (text, after) = if let Some(r) = rest.strip_prefix("->>") {
            (true, r)
        } else if let Some(r) = rest.strip_prefix("->") {
            (false, r)
        } else {
            return Err(perr("invalid JSON path", s.to_owned()));
        };
        let end = after.find("->").unwrap_or(after.len());
        let key = after[..end].trim();
        if key.is_empty() || key.len() > MAX_IDENT || key.contains('\0') {
            return Err(perr("invalid JSON path key", s.to_owned()));
        }
        path.push(PathStep { key: key.trim_matches('\'').to_owned(), text });
        rest = &after[end..];
    }
    if path.len() > 16 {
        return Err(perr("JSON path too long", s.to_owned()));
    }
    Ok(Field { column, path })
}

/// Casts a `select` may apply (`col::text`).
const CASTS: &[&str] = &[
    "text",
    "int",
    "integer",
    "int4",
    "bigint",
    "int8",
    "smallint",
    "numeric",
    "real",
    "double precision",
    "float8",
    "boolean",
    "bool",
    "json",
    "jsonb",
    "date",
    "timestamptz",
    "timestamp",
    "uuid",
];

/// Parses a `select` value.
pub fn parse_select(s: &str, depth: usize) -> Result<Vec<SelectItem>, ParseError> {
    if depth > MAX_EMBED_DEPTH {
        return Err(perr("embedding nested too deeply", format!("at most {MAX_EMBED_DEPTH} levels")));
    }
    let mut items = Vec::new();
    for part in split_top(s, ',')? {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        if part == "*" {
            items.push(SelectItem::Star);
            continue;
        }
        // alias:rest — the alias ends at the first ':' that is not part of '::'.
        let (alias, rest) = match find_alias_colon(part) {
            Some(i) => (Some(ident(&part[..i])?), part[i + 1..].trim()),
            None => (None, part),
        };
        if let Some(open) = rest.find('(') {
            let close = rest.rfind(')').ok_or_else(|| perr("unbalanced parentheses", part.to_owned()))?;
            if close != rest.len() - 1 || close < open {
                return Err(perr("unexpected text after embedded resource", part.to_owned()));
            }
            let head = &rest[..open];
            let mut bits = head.split('!');
            let relation = ident(bits.next().unwrap_or(""))?;
            let mut hint = None;
            let mut inner = false;
            for b in bits {
                match b.trim() {
                    "inner" => inner = true,
                    "left" => {}
                    other => hint = Some(ident(other)?),
                }
            }
            let select = parse_select(&rest[open + 1..close], depth + 1)?;
            items.push(SelectItem::Embed(Embed { alias, relation, hint, inner, select }));
            continue;
        }
        let (field, cast) = match rest.split_once("::") {
            Some((f, c)) => {
                let c = c.trim().to_lowercase();
                if !CASTS.contains(&c.as_str()) {
                    return Err(perr("unsupported cast", c));
                }
                (f, Some(c))
            }
            None => (rest, None),
        };
        items.push(SelectItem::Field { alias, field: parse_field(field)?, cast });
    }
    if items.is_empty() {
        items.push(SelectItem::Star);
    }
    Ok(items)
}

fn find_alias_colon(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'(' | b'-' => return None,
            b':' if b.get(i + 1) == Some(&b':') => return None,
            b':' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        let inner = &v[1..v.len() - 1];
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        out
    } else {
        v.to_owned()
    }
}

/// `op.value` or `not.op.value` (the part after `col=`).
fn parse_op_value(field: Field, s: &str) -> Result<Cond, ParseError> {
    let (negated, s) = match s.strip_prefix("not.") {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (op_s, value) = s.split_once('.').ok_or_else(|| perr("missing operator", s.to_owned()))?;
    // PostgREST's modifiers (`eq(any)`) and full-text operators are not supported.
    let op = Op::parse(op_s).ok_or_else(|| perr("unknown or unsupported operator", op_s.to_owned()))?;
    let operand = match op {
        Op::Is => Operand::Is(match value.to_lowercase().as_str() {
            "null" => IsValue::Null,
            "not_null" => IsValue::NotNull,
            "true" => IsValue::True,
            "false" => IsValue::False,
            "unknown" => IsValue::Unknown,
            _ => return Err(perr("is takes null, not_null, true, false or unknown", value.to_owned())),
        }),
        Op::In => {
            let inner = value
                .trim()
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .ok_or_else(|| perr("in takes a list in parentheses", value.to_owned()))?;
            let list = if inner.trim().is_empty() {
                vec![]
            } else {
                split_top(inner, ',')?.iter().map(|v| unquote(v)).collect()
            };
            if list.len() > 1000 {
                return Err(perr("in list too long", "at most 1000 values"));
            }
            Operand::List(list)
        }
        Op::Like | Op::Ilike => Operand::Value(value.replace('*', "%")),
        _ => Operand::Value(unquote(value)),
    };
    Ok(Cond::Leaf { field, op, negated, operand })
}

/// Parses `(a.eq.1,or(b.gt.2,c.is.null))` (the value of `or=` / `and=`).
fn parse_logic_list(s: &str, depth: usize) -> Result<Vec<Cond>, ParseError> {
    if depth > MAX_LOGIC_DEPTH {
        return Err(perr("logic tree nested too deeply", format!("at most {MAX_LOGIC_DEPTH} levels")));
    }
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(|| perr("logic operator takes a list in parentheses", s.to_owned()))?;
    let mut out = Vec::new();
    for item in split_top(inner, ',')? {
        let item = item.trim();
        out.push(parse_logic_item(item, depth)?);
    }
    Ok(out)
}

fn parse_logic_item(item: &str, depth: usize) -> Result<Cond, ParseError> {
    let (negated, rest) = match item.strip_prefix("not.") {
        Some(r) => (true, r),
        None => (false, item),
    };
    for (kw, is_or) in [("or(", true), ("and(", false)] {
        if let Some(r) = rest.strip_prefix(kw) {
            let items = parse_logic_list(&format!("({r}"), depth + 1)?;
            return Ok(if is_or { Cond::Or { negated, items } } else { Cond::And { negated, items } });
        }
    }
    // field.op.value — the field ends at the first '.' outside a JSON path.
    let dot = item.find('.').ok_or_else(|| perr("invalid filter", item.to_owned()))?;
    let field = parse_field(&item[..dot])?;
    parse_op_value(field, &item[dot + 1..])
}

fn parse_order(s: &str) -> Result<Vec<OrderTerm>, ParseError> {
    let mut out = Vec::new();
    for term in split_top(s, ',')? {
        let mut parts = term.split('.');
        let field = parse_field(parts.next().unwrap_or(""))?;
        let mut t = OrderTerm { field, desc: false, nulls_first: None };
        for p in parts {
            match p {
                "asc" => t.desc = false,
                "desc" => t.desc = true,
                "nullsfirst" => t.nulls_first = Some(true),
                "nullslast" => t.nulls_first = Some(false),
                other => return Err(perr("invalid order modifier", other.to_owned())),
            }
        }
        out.push(t);
    }
    Ok(out)
}

fn parse_u64(key: &str, v: &str) -> Result<u64, ParseError> {
    v.trim().parse::<u64>().map_err(|_| perr(format!("{key} must be a non-negative integer"), v.to_owned()))
}

fn ident_list(v: &str) -> Result<Vec<String>, ParseError> {
    split_top(v, ',')?.iter().map(|c| ident(c)).collect()
}

/// Parses a whole query string.
pub fn parse_query(raw: &str) -> Result<Query, ParseError> {
    let mut q = Query::default();
    let mut select = None;
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(k)?;
        let value = percent_decode(v)?;
        // `author.posts.order` applies to an embedded resource; `not.or` is one key.
        let logic = ["not.or", "not.and"].iter().find(|k| key == **k || key.ends_with(&format!(".{k}")));
        if let Some(k) = logic {
            let path = key.strip_suffix(*k).unwrap_or("").trim_end_matches('.').to_owned();
            let items = parse_logic_list(&value, 1)?;
            let c =
                if k.ends_with("or") { Cond::Or { negated: true, items } } else { Cond::And { negated: true, items } };
            q.scopes.entry(path).or_default().conds.push(c);
            continue;
        }
        let (path, last) = match key.rsplit_once('.') {
            Some((p, l)) if !key.contains("->") => (p.to_owned(), l.to_owned()),
            _ => (String::new(), key.clone()),
        };
        match last.as_str() {
            "select" if path.is_empty() => select = Some(value),
            "on_conflict" if path.is_empty() => q.on_conflict = Some(ident_list(&value)?),
            "columns" if path.is_empty() => q.columns = Some(ident_list(&value)?),
            "order" => q.scopes.entry(path).or_default().order = parse_order(&value)?,
            "limit" => q.scopes.entry(path).or_default().limit = Some(parse_u64("limit", &value)?),
            "offset" => q.scopes.entry(path).or_default().offset = Some(parse_u64("offset", &value)?),
            "or" | "and" => {
                let items = parse_logic_list(&value, 1)?;
                let c =
                    if last == "or" { Cond::Or { negated: false, items } } else { Cond::And { negated: false, items } };
                q.scopes.entry(path).or_default().conds.push(c);
            }
            _ => {
                let field = parse_field(&last)?;
                let c = parse_op_value(field, &value)?;
                q.scopes.entry(path).or_default().conds.push(c);
            }
        }
    }
    q.select = match select {
        Some(s) => parse_select(&s, 0)?,
        None => vec![SelectItem::Star],
    };
    Ok(q)
}
