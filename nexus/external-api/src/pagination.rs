//! Oxide's list parameters, on dropshot's pagination.
//!
//! A list request is either the first page of a scan, with the scan parameters in the query
//! (`sort_by`, plus a selector such as `project`), or a later page, with only `page_token` (and
//! optionally `limit`). The token is dropshot's: the serialized [`PageSelector`], which carries
//! the scan parameters along with the last item seen, so later pages need nothing else. (The
//! Oxide SDK's `stream()` relies on that: it sends only `limit` and `page_token` after the
//! first page, dropping `project` and `sort_by`.)
//!
//! A handler reads a request with [`scan_params`] (the scan, whichever page this is) and
//! [`name_or_id_pagination`] / [`id_pagination`] (the marker, direction and limit to query
//! with), and builds the response with [`results_page_by_name_or_id`] /
//! [`results_page_by_id`]:
//!
//! ```ignore
//! async fn instance_list(
//!     rqctx: RequestContext<Self::Context>,
//!     query: Query<PaginatedByNameOrId<ProjectSelector>>,
//! ) -> Result<HttpResponseOk<ResultsPage<Instance>>, HttpError> {
//!     let query = query.into_inner();
//!     let limit = rqctx.page_limit(&query)?; // the client's limit, capped; default 100
//!     let scan = scan_params(&query);
//!     let project = lookup_project(&scan.selector.project).await?;
//!     let page = match name_or_id_pagination(&query, limit)? {
//!         PageByNameOrId::Name(p) => PaginatedBy::Name(DataPageParams {
//!             marker: p.marker, direction: order(p.direction), limit: p.limit,
//!         }),
//!         PageByNameOrId::Id(p) => PaginatedBy::Id(DataPageParams {
//!             marker: p.marker, direction: order(p.direction), limit: p.limit,
//!         }),
//!     };
//!     let instances: Vec<Instance> = /* datastore.instance_list_with_vmm(project, &page) -> views */;
//!     Ok(HttpResponseOk(results_page_by_name_or_id(instances, scan)?))
//! }
//! ```

use crate::views::{
    Disk, Instance, InstanceNetworkInterface, Project, Sled, Snapshot, Vpc, VpcSubnet,
};
use dropshot::{HttpError, PaginationOrder, PaginationParams, ResultsPage, WhichPage};
use halyard_common::ids::GenericUuid;
use halyard_common::{Name, NameOrId};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use uuid::Uuid;

/// Query parameters of a list that can be sorted by name or by id: `limit`, `page_token`,
/// `sort_by` (`name_ascending`, the default, `name_descending` or `id_ascending`), plus the
/// fields of `Selector` (none for `()`).
pub type PaginatedByNameOrId<Selector = ()> =
    PaginationParams<ScanByNameOrId<Selector>, PageSelectorByNameOrId<Selector>>;

/// Query parameters of a list sorted by id: `limit`, `page_token`, `sort_by` (`id_ascending`,
/// the only and default value), plus the fields of `Selector` (none for `()`).
pub type PaginatedById<Selector = ()> =
    PaginationParams<ScanById<Selector>, PageSelectorById<Selector>>;

/// What the page token of a by-name-or-id list holds.
pub type PageSelectorByNameOrId<Selector = ()> = PageSelector<ScanByNameOrId<Selector>, NameOrId>;

/// What the page token of a by-id list holds.
pub type PageSelectorById<Selector = ()> = PageSelector<ScanById<Selector>, Uuid>;

/// Supported set of sort modes for scanning by name or id
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NameOrIdSortMode {
    /// sort in increasing order of "name"
    #[default]
    NameAscending,
    /// sort in decreasing order of "name"
    NameDescending,
    /// sort in increasing order of "id"
    IdAscending,
}

/// Supported set of sort modes for scanning by id only.
///
/// Currently, we only support scanning in ascending order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IdSortMode {
    /// sort in increasing order of "id"
    #[default]
    IdAscending,
}

/// Scan parameters of a list sortable by name or id: the sort order and a selector (e.g.
/// [`ProjectSelector`](crate::params::ProjectSelector) for instances; `()` for none).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct ScanByNameOrId<Selector = ()> {
    #[serde(default)]
    pub sort_by: NameOrIdSortMode,
    #[serde(flatten)]
    pub selector: Selector,
}

/// Scan parameters of a list sorted by id: the sort order and a selector (`()` for none).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct ScanById<Selector = ()> {
    #[serde(default)]
    pub sort_by: IdSortMode,
    #[serde(flatten)]
    pub selector: Selector,
}

/// What a page token holds: the scan's parameters, and the name or id of the last item of the
/// previous page.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct PageSelector<Scan, Marker> {
    #[serde(flatten)]
    pub scan: Scan,
    pub last_seen: Marker,
}

/// Which items one page request asks for: at most `limit` of them, strictly after `marker`
/// (none: from the start) in `direction`. Maps field for field onto
/// `halyard_db_queries::pagination::DataPageParams`.
#[derive(Debug)]
pub struct PageParams<'a, M> {
    pub marker: Option<&'a M>,
    pub direction: PaginationOrder,
    pub limit: NonZeroU32,
}

// By hand: a derive would require `M: Clone`, but only a reference to `M` is held.
impl<M> Clone for PageParams<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for PageParams<'_, M> {}

/// A page request of a list sortable by name or id: which key to sort and page by. Maps onto
/// `halyard_db_queries::pagination::PaginatedBy`.
#[derive(Debug, Clone, Copy)]
pub enum PageByNameOrId<'a> {
    Name(PageParams<'a, Name>),
    Id(PageParams<'a, Uuid>),
}

/// The scan parameters of a list request, whether it is the first page (they are in the
/// query) or a later one (they are in the page token).
pub fn scan_params<Scan, Marker>(
    params: &PaginationParams<Scan, PageSelector<Scan, Marker>>,
) -> &Scan
where
    Scan: DeserializeOwned,
    PageSelector<Scan, Marker>: DeserializeOwned + Serialize,
{
    match &params.page {
        WhichPage::First(scan) => scan,
        WhichPage::Next(selector) => &selector.scan,
    }
}

/// The page a by-name-or-id list request asks for. `limit` is the page size to use, normally
/// `rqctx.page_limit(params)?` (the client's `limit` capped by the server's maximum, or the
/// server's default, 100 unless configured).
///
/// Fails (400) on a page token whose marker does not match its sort order (a name marker
/// with `id_ascending` or an id marker with a name order), which only a forged token has.
pub fn name_or_id_pagination<'a, S>(
    params: &'a PaginatedByNameOrId<S>,
    limit: NonZeroU32,
) -> Result<PageByNameOrId<'a>, HttpError>
where
    S: DeserializeOwned + Serialize,
{
    let (sort_by, marker) = match &params.page {
        WhichPage::First(scan) => (scan.sort_by, None),
        WhichPage::Next(selector) => (selector.scan.sort_by, Some(&selector.last_seen)),
    };
    let bad_token = || {
        HttpError::for_bad_request(
            Some("InvalidPageToken".to_string()),
            format!(
                "page_token does not match its sort order ({}); start the list again without \
                 page_token",
                sort_mode_label(sort_by)
            ),
        )
    };
    match sort_by {
        NameOrIdSortMode::NameAscending | NameOrIdSortMode::NameDescending => {
            let marker = match marker {
                None => None,
                Some(NameOrId::Name(name)) => Some(name),
                Some(NameOrId::Id(_)) => return Err(bad_token()),
            };
            let direction = if sort_by == NameOrIdSortMode::NameAscending {
                PaginationOrder::Ascending
            } else {
                PaginationOrder::Descending
            };
            Ok(PageByNameOrId::Name(PageParams {
                marker,
                direction,
                limit,
            }))
        }
        NameOrIdSortMode::IdAscending => {
            let marker = match marker {
                None => None,
                Some(NameOrId::Id(id)) => Some(id),
                Some(NameOrId::Name(_)) => return Err(bad_token()),
            };
            Ok(PageByNameOrId::Id(PageParams {
                marker,
                direction: PaginationOrder::Ascending,
                limit,
            }))
        }
    }
}

/// The page a by-id list request asks for; `limit` as for [`name_or_id_pagination`].
pub fn id_pagination<'a, S>(params: &'a PaginatedById<S>, limit: NonZeroU32) -> PageParams<'a, Uuid>
where
    S: DeserializeOwned + Serialize,
{
    let marker = match &params.page {
        WhichPage::First(_) => None,
        WhichPage::Next(selector) => Some(&selector.last_seen),
    };
    let IdSortMode::IdAscending = scan_params(params).sort_by;
    PageParams {
        marker,
        direction: PaginationOrder::Ascending,
        limit,
    }
}

fn sort_mode_label(mode: NameOrIdSortMode) -> &'static str {
    match mode {
        NameOrIdSortMode::NameAscending => "name_ascending",
        NameOrIdSortMode::NameDescending => "name_descending",
        NameOrIdSortMode::IdAscending => "id_ascending",
    }
}

/// An item of a list paged by id.
pub trait PageItemId {
    fn page_id(&self) -> Uuid;
}

/// An item of a list paged by name or id.
pub trait PageItemName: PageItemId {
    fn page_name(&self) -> &Name;
}

/// The response page of a by-name-or-id list: `items` (already in the scan's order, at most
/// the limit), and a `next_page` token naming the last one (`null` when `items` is empty,
/// which ends the scan; as in Oxide, a short page still gets a token).
pub fn results_page_by_name_or_id<T, S>(
    items: Vec<T>,
    scan: &ScanByNameOrId<S>,
) -> Result<ResultsPage<T>, HttpError>
where
    T: PageItemName,
    S: Clone + Serialize,
{
    ResultsPage::new(items, scan, |item, scan| PageSelectorByNameOrId {
        scan: scan.clone(),
        last_seen: match scan.sort_by {
            NameOrIdSortMode::NameAscending | NameOrIdSortMode::NameDescending => {
                NameOrId::Name(item.page_name().clone())
            }
            NameOrIdSortMode::IdAscending => NameOrId::Id(item.page_id()),
        },
    })
}

/// The response page of a by-id list (see [`results_page_by_name_or_id`]).
pub fn results_page_by_id<T, S>(
    items: Vec<T>,
    scan: &ScanById<S>,
) -> Result<ResultsPage<T>, HttpError>
where
    T: PageItemId,
    S: Clone + Serialize,
{
    ResultsPage::new(items, scan, |item, scan| PageSelectorById {
        scan: scan.clone(),
        last_seen: item.page_id(),
    })
}

impl PageItemId for Project {
    fn page_id(&self) -> Uuid {
        self.id.into_untyped_uuid()
    }
}

impl PageItemName for Project {
    fn page_name(&self) -> &Name {
        &self.name
    }
}

impl PageItemId for Instance {
    fn page_id(&self) -> Uuid {
        self.id.into_untyped_uuid()
    }
}

impl PageItemName for Instance {
    fn page_name(&self) -> &Name {
        &self.name
    }
}

impl PageItemId for Disk {
    fn page_id(&self) -> Uuid {
        self.id.into_untyped_uuid()
    }
}

impl PageItemName for Disk {
    fn page_name(&self) -> &Name {
        &self.name
    }
}

impl PageItemId for Sled {
    fn page_id(&self) -> Uuid {
        self.id.into_untyped_uuid()
    }
}

impl PageItemId for Snapshot {
    fn page_id(&self) -> Uuid {
        self.id.into_untyped_uuid()
    }
}

impl PageItemName for Snapshot {
    fn page_name(&self) -> &Name {
        &self.name
    }
}

impl PageItemId for Vpc {
    fn page_id(&self) -> Uuid {
        self.id.into_untyped_uuid()
    }
}

impl PageItemName for Vpc {
    fn page_name(&self) -> &Name {
        &self.name
    }
}

impl PageItemId for VpcSubnet {
    fn page_id(&self) -> Uuid {
        self.id.into_untyped_uuid()
    }
}

impl PageItemName for VpcSubnet {
    fn page_name(&self) -> &Name {
        &self.name
    }
}

impl PageItemId for InstanceNetworkInterface {
    fn page_id(&self) -> Uuid {
        self.id.into_untyped_uuid()
    }
}

impl PageItemName for InstanceNetworkInterface {
    fn page_name(&self) -> &Name {
        &self.name
    }
}
