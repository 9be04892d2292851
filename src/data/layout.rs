//! Class-folder layout: `daisy/1.jpg` or `flower_photos/daisy/1.jpg` (one top folder
//! that everything shares is dropped). The class is the first folder below that.

/// Where a file sits: its class, or why it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Class(String),
    Unplaced(String),
}

/// Decides the placement of every path (same order). Paths are normalised relative
/// paths with `/` separators, as the archive reader yields them.
pub fn place_in_classes(paths: &[&str]) -> (Option<String>, Vec<Placement>) {
    // A shared folder is a top folder only when something lies below a class folder in it.
    let shared_top = shared_top(paths).filter(|_| paths.iter().any(|p| p.matches('/').count() >= 2));
    let placements = paths
        .iter()
        .map(|path| {
            let rest = match &shared_top {
                Some(top) => &path[top.len() + 1..],
                None => path,
            };
            match rest.split_once('/') {
                Some((class, _)) if !class.is_empty() && class.chars().count() <= 128 => {
                    Placement::Class(class.to_owned())
                }
                Some(_) => Placement::Unplaced("the class folder name must be 1 to 128 characters".into()),
                None => Placement::Unplaced("the file is not inside a class folder".into()),
            }
        })
        .collect();
    (shared_top, placements)
}

/// The first folder of every path, when all paths lie in one and the same folder.
pub(super) fn shared_top(paths: &[&str]) -> Option<String> {
    let (first, _) = paths.first()?.split_once('/')?;
    paths.iter().all(|path| path.split_once('/').is_some_and(|(top, _)| top == first)).then(|| first.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(paths: &[&str]) -> (Option<String>, Vec<String>) {
        let (top, placements) = place_in_classes(paths);
        let names = placements
            .into_iter()
            .map(|p| match p {
                Placement::Class(c) => c,
                Placement::Unplaced(_) => "-".into(),
            })
            .collect();
        (top, names)
    }

    #[test]
    fn one_shared_top_folder_is_dropped() {
        assert_eq!(
            classes(&["flower_photos/daisy/1.jpg", "flower_photos/rose/2.jpg", "flower_photos/LICENSE.jpg"]),
            (Some("flower_photos".into()), vec!["daisy".into(), "rose".into(), "-".into()])
        );
    }

    #[test]
    fn class_folders_at_the_root() {
        assert_eq!(
            classes(&["daisy/1.jpg", "rose/a/2.jpg", "loose.jpg"]),
            (None, vec!["daisy".into(), "rose".into(), "-".into()])
        );
        // A single class folder at the root is a class, not a top folder to drop.
        assert_eq!(classes(&["daisy/1.jpg", "daisy/2.jpg"]), (None, vec!["daisy".into(), "daisy".into()]));
    }
}
