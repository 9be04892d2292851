//! `?limit=&offset=` for the list endpoints: a list answer is at most [`MAX_LIMIT`] items
//! (each of bounded size), and says where the next page starts.

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use serde::Deserialize;

use crate::error::Error;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;
/// The furthest a list may be paged: far past any real list, and small enough that the
/// offset plus a page never overflows.
pub const MAX_OFFSET: i64 = 1_000_000_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// Items to skip: the `next_offset` of the page before.
    #[param(minimum = 0, maximum = 1_000_000_000)]
    offset: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

impl Page {
    pub fn from_query(query: Result<Query<PageParams>, QueryRejection>) -> Result<Self, Error> {
        let params = super::problem::read_query(query)?;
        Self::checked(params.limit, params.offset)
    }

    /// The page `limit` and `offset` name (defaults: [`DEFAULT_LIMIT`], 0), or why not: for
    /// list endpoints whose query has more than the two.
    pub fn checked(limit: Option<i64>, offset: Option<i64>) -> Result<Self, Error> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        let offset = offset.unwrap_or(0);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(Error::BadRequest(format!("limit must be between 1 and {MAX_LIMIT}; got {limit}")));
        }
        if !(0..=MAX_OFFSET).contains(&offset) {
            return Err(Error::BadRequest(format!("offset must be between 0 and {MAX_OFFSET}; got {offset}")));
        }
        Ok(Self { limit, offset })
    }

    /// Rows to fetch: one more than a page, to learn whether another page follows.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// Keeps a page of `rows` (fetched with [`Page::fetch`]); returns where the next starts.
    pub fn trim<T>(&self, rows: &mut Vec<T>) -> Option<i64> {
        let more = rows.len() as i64 > self.limit;
        rows.truncate(self.limit as usize);
        more.then_some(self.offset + self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(query: &str) -> Result<Page, Error> {
        let uri: axum::http::Uri = format!("/x?{query}").parse().unwrap();
        Page::from_query(Query::try_from_uri(&uri))
    }

    #[test]
    fn limits_are_checked_and_the_next_page_is_named() {
        assert_eq!(page("").unwrap(), Page { limit: 50, offset: 0 });
        assert_eq!(page("limit=5&offset=10").unwrap(), Page { limit: 5, offset: 10 });
        assert_eq!(page("offset=1000000000").unwrap(), Page { limit: 50, offset: MAX_OFFSET });
        // Found by Schemathesis: an offset near i64::MAX overflowed once a page was added to it.
        for bad in [
            "limit=0",
            "limit=201",
            "offset=-1",
            "offset=1000000001",
            "offset=9223372036854775807",
            "limit=x",
            "size=3",
        ] {
            assert!(matches!(page(bad), Err(Error::BadRequest(_))), "{bad}");
        }
        let p = Page { limit: 2, offset: 4 };
        let mut rows = vec![1, 2, 3];
        assert_eq!(p.trim(&mut rows), Some(6));
        assert_eq!(rows, [1, 2]);
        let mut rows = vec![1, 2];
        assert_eq!(p.trim(&mut rows), None);
    }
}
