//! [`Capped`]: a list that keeps its first entries and counts the rest, for every list an
//! upload decides the length of (report entries, annotation problems).

/// Entries each list of a report keeps; the rest are only counted.
pub const LISTED_PER_KIND: usize = 100;

/// A list that keeps its first `cap` entries and counts every entry pushed.
///
/// It reads as the slice of kept entries; [`total`](Self::total) is how many there were.
#[derive(Debug, Clone, PartialEq)]
pub struct Capped<T> {
    listed: Vec<T>,
    total: usize,
    cap: usize,
}

impl<T> Capped<T> {
    pub fn new(cap: usize) -> Self {
        Self { listed: Vec::new(), total: 0, cap }
    }

    pub fn push(&mut self, item: T) {
        self.push_with(|| item);
    }

    /// Counts an entry, and builds it only when it is kept: past the cap, an entry costs a
    /// counter increment.
    pub fn push_with(&mut self, item: impl FnOnce() -> T) {
        self.total += 1;
        if self.listed.len() < self.cap {
            self.listed.push(item());
        }
    }

    /// Takes over another list's entries and its count of the ones it left out.
    pub fn absorb(&mut self, other: Capped<T>) {
        let omitted = other.omitted();
        for item in other.listed {
            self.push(item);
        }
        self.total += omitted;
    }

    pub fn extend(&mut self, items: impl IntoIterator<Item = T>) {
        for item in items {
            self.push(item);
        }
    }

    /// Every entry pushed, kept or not.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Entries counted but not kept.
    pub fn omitted(&self) -> usize {
        self.total - self.listed.len()
    }
}

impl<T> Default for Capped<T> {
    fn default() -> Self {
        Self::new(LISTED_PER_KIND)
    }
}

impl<T> std::ops::Deref for Capped<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.listed
    }
}

impl<T> IntoIterator for Capped<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;

    fn into_iter(self) -> Self::IntoIter {
        self.listed.into_iter()
    }
}

impl<T: PartialEq> PartialEq<Vec<T>> for Capped<T> {
    fn eq(&self, other: &Vec<T>) -> bool {
        self.total == self.listed.len() && self.listed == *other
    }
}
