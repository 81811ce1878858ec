//! The PostgREST query parser: what it accepts, what it refuses, and that no input makes it panic.

use appdb::rest::{Cond, IsValue, Op, Operand, SelectItem, parse_query};
use proptest::prelude::*;

#[test]
fn parses_select_filters_logic_and_order() {
    let q = parse_query(
        "select=id,name:title,meta->>color,author:profiles!owner_fkey(username,posts(*))&priority=gte.2&title=not.ilike.*milk*\
         &or=(done.is.true,and(priority.in.(1,2),tags.cs.{a,b}))&order=priority.desc.nullslast,id&limit=10&offset=5\
         &posts.order=id.desc&author.username=eq.alice",
    )
    .unwrap();
    assert_eq!(q.select.len(), 4);
    match &q.select[3] {
        SelectItem::Embed(e) => {
            assert_eq!(
                (e.alias.as_deref(), e.relation.as_str(), e.hint.as_deref()),
                (Some("author"), "profiles", Some("owner_fkey"))
            );
            assert!(matches!(e.select[1], SelectItem::Embed(_)));
        }
        other => panic!("{other:?}"),
    }
    let root = &q.scopes[""];
    assert_eq!((root.limit, root.offset), (Some(10), Some(5)));
    assert_eq!(root.order.len(), 2);
    assert!(root.order[0].desc && root.order[0].nulls_first == Some(false));
    assert!(
        matches!(&root.conds[1], Cond::Leaf { op: Op::Ilike, negated: true, operand: Operand::Value(v), .. } if v == "%milk%")
    );
    match &root.conds[2] {
        Cond::Or { negated: false, items } => {
            assert!(matches!(items[0], Cond::Leaf { op: Op::Is, operand: Operand::Is(IsValue::True), .. }));
            assert!(matches!(&items[1], Cond::And { items, .. } if items.len() == 2));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(q.scopes["posts"].order.len(), 1);
    assert_eq!(q.scopes["author"].conds.len(), 1);
}

#[test]
fn in_lists_keep_quoted_commas_and_values_stay_values() {
    let q = parse_query("name=in.(%22a,b%22,c)&x=eq.1;drop table t").unwrap();
    assert!(matches!(&q.scopes[""].conds[0], Cond::Leaf { operand: Operand::List(l), .. } if l == &["a,b", "c"]));
    assert!(matches!(&q.scopes[""].conds[1], Cond::Leaf { operand: Operand::Value(v), .. } if v == "1;drop table t"));
}

#[test]
fn refuses_unknown_operators_bad_paging_and_deep_nesting() {
    for bad in [
        "a=zz.1",
        "a=fts.word",
        "limit=-1",
        "offset=x",
        "order=a.sideways",
        "select=a::regclass",
        "a=in.1,2",
        "or=(a.eq.1",
        "select=a(b",
        "a%00=eq.1",
    ] {
        let e = parse_query(bad).unwrap_err();
        assert_eq!(e.code, "PGRST100", "{bad}");
    }
    let deep = format!("or=({}a.eq.1{})", "or(".repeat(12), ")".repeat(12));
    assert!(parse_query(&deep).is_err());
    let deep_embed = format!("select={}x{}", "r(".repeat(12), ")".repeat(12));
    assert!(parse_query(&deep_embed).is_err());
}

proptest! {
    #[test]
    fn never_panics_on_any_query(s in "\\PC{0,200}") {
        let _ = parse_query(&s);
    }

    #[test]
    fn never_panics_on_query_like_input(s in "[a-z_.,()!:*\"%0-9>=-]{0,120}") {
        let _ = parse_query(&format!("select={s}"));
        let _ = parse_query(&format!("or=({s})"));
        let _ = parse_query(&format!("a={s}"));
        let _ = parse_query(&format!("order={s}"));
    }
}
