//! Descriptors, threads, zombies and /dev/shm stay flat over long runs; nothing is lost under
//! descriptor pressure.
