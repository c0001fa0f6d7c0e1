//! `rd serve` as a client sees it: a server on a free loopback port, tiny seeded models built
//! by the tests, and every endpoint, error, reload and shutdown exercised over HTTP.

mod common;
mod endpoints;
mod errors;
mod lifecycle;
mod page;
