//! Marker-based pagination, as Oxide's API pages: "the next `limit` items after `marker` in
//! this order". Stable under concurrent inserts, unlike offsets.

use halyard_common::Name;
use std::num::NonZeroU32;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaginationOrder {
    Ascending,
    Descending,
}

/// One page request: items strictly after `marker` (in `direction`), at most `limit` of them.
#[derive(Debug)]
pub struct DataPageParams<'a, M> {
    pub marker: Option<&'a M>,
    pub direction: PaginationOrder,
    pub limit: NonZeroU32,
}

// By hand: a derive would require `M: Copy`, but only a reference to `M` is held.
impl<M> Clone for DataPageParams<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for DataPageParams<'_, M> {}

/// Which key a listing is sorted and paged by.
#[derive(Debug, Clone, Copy)]
pub enum PaginatedBy<'a> {
    Name(DataPageParams<'a, Name>),
    Id(DataPageParams<'a, Uuid>),
}

/// Applies a page's marker, order and limit to a boxed diesel query on `column`; the marker
/// is converted with `wrap` into the column's SQL type.
macro_rules! paginate {
    ($query:expr, $column:expr, $params:expr, $wrap:expr) => {{
        use diesel::prelude::*;
        use $crate::pagination::PaginationOrder;
        let params = $params;
        let mut query = $query;
        if let Some(marker) = params.marker {
            let marker = $wrap(marker.clone());
            query = match params.direction {
                PaginationOrder::Ascending => query.filter($column.gt(marker)),
                PaginationOrder::Descending => query.filter($column.lt(marker)),
            };
        }
        let query = match params.direction {
            PaginationOrder::Ascending => query.order($column.asc()),
            PaginationOrder::Descending => query.order($column.desc()),
        };
        query.limit(i64::from(params.limit.get()))
    }};
}

pub(crate) use paginate;
