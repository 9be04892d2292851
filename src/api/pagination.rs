//! `?limit=&offset=` for the list endpoints: a list answer is at most [`MAX_LIMIT`] items
//! (each of bounded size), and says where the next page starts.

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use serde::Deserialize;

use crate::error::Error;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    limit: Option<i64>,
    offset: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

impl Page {
    pub fn from_query(query: Result<Query<PageParams>, QueryRejection>) -> Result<Self, Error> {
        let Query(params) = query.map_err(|e| Error::BadRequest(format!("invalid query: {}", e.body_text())))?;
        let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
        let offset = params.offset.unwrap_or(0);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(Error::BadRequest(format!("limit must be between 1 and {MAX_LIMIT}; got {limit}")));
        }
        if offset < 0 {
            return Err(Error::BadRequest(format!("offset must not be negative; got {offset}")));
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
        for bad in ["limit=0", "limit=201", "offset=-1", "limit=x", "size=3"] {
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
