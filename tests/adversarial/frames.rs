//! Length-prefixed frames on every channel: oversized, truncated and garbage headers, crafted
//! handles, wrong and missing authkeys.
