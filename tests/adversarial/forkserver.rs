//! The fork server as a hostile local user and a garbage-sending peer sees it.
