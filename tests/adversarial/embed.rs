//! The embedding channel: host functions called from Python threads, deadlines mid-frame,
//! memory limits.
