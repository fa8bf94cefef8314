//! `--upstream URL`: follow another allot-server over `WatchConfig`, adopting its revisions.
