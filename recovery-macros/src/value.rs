//! Small readers for attribute values given as expressions.

use syn::{Expr, Lit};

/// The literal inside `value`, looking through invisible groups.
pub fn literal(value: &Expr) -> Option<&Lit> {
    match value {
        Expr::Lit(e) => Some(&e.lit),
        Expr::Group(g) => literal(&g.expr),
        _ => None,
    }
}

/// Whether `value` is a negated literal such as `-3`.
pub fn is_negative_literal(value: &Expr) -> bool {
    match value {
        Expr::Unary(u) => matches!(u.op, syn::UnOp::Neg(_)) && literal(&u.expr).is_some(),
        Expr::Group(g) => is_negative_literal(&g.expr),
        _ => false,
    }
}
