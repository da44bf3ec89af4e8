//! Prepared-statement caching for the writes diesel will not cache.
//!
//! diesel-async keeps a cache of prepared statements per connection, but diesel marks every
//! `UPDATE`, and every `INSERT` of an `Insertable` struct, "unsafe to cache": a changeset or an
//! insert with `Option` fields can produce different SQL from one call to the next, so diesel
//! refuses to key them by their Rust type. Such a statement is then prepared anew at every
//! execution: a Parse round trip before the Bind/Execute one, and PostgreSQL parsing,
//! analysing and planning it again (measured: 27,000 of 44,000 statements in a lifecycle
//! benchmark were prepared anew; each INSERT or UPDATE cost two round trips instead of one).
//!
//! [`CachedByText`] caches such a statement under its SQL text and bind types instead, which
//! is exact: the same text with the same parameter types is the same prepared statement, and
//! a different shape (a `DEFAULT` instead of a bind) is a different text, so a different
//! entry. Use it only for statements whose SQL comes in a few fixed shapes (not, say, an
//! `IN` list of any length), so the per-connection cache stays small.

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};

/// A statement cached by its SQL text (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CachedByText<Q>(Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for CachedByText<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

/// No static id: one Rust type may produce several SQL texts, so the cache must key on the
/// text.
impl<Q> QueryId for CachedByText<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for CachedByText<Q> {
    type SqlType = Q::SqlType;
}

/// `.cached_by_text()` on any statement.
pub(crate) trait CacheByText: Sized {
    fn cached_by_text(self) -> CachedByText<Self> {
        CachedByText(self)
    }
}

impl<Q: QueryFragment<Pg>> CacheByText for Q {}
