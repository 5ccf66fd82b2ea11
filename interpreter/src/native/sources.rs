//! The text of procpy's own frozen Python modules (`interpreter/py`), kept beside their
//! bytecode so tracebacks through them show source lines, as CPython's do. `build.rs` writes
//! the table; `_procpy_fixes` hands it to the frozen importer's `get_source`, where
//! `linecache` (and so the `traceback` module) looks.

/// (module name, source), sorted by name.
static SOURCES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/frozen_sources.rs"));

/// The source of procpy's frozen module `name`, if it is one.
pub(crate) fn frozen_source(name: &str) -> Option<&'static str> {
    SOURCES.binary_search_by(|(n, _)| (*n).cmp(name)).ok().map(|i| SOURCES[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_and_packages_are_found_by_name() {
        let pool = frozen_source("multiprocessing.pool").expect("pool is frozen");
        assert_eq!(pool, include_str!("../../py/multiprocessing/pool.py"));
        let pkg = frozen_source("multiprocessing").expect("the package is frozen");
        assert_eq!(pkg, include_str!("../../py/multiprocessing/__init__.py"));
        assert!(frozen_source("multiprocessing.nonexistent").is_none());
        assert!(frozen_source("os").is_none());
    }
}
