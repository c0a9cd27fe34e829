//! [`LoadShedLayer`]: refuse at once, with 503, when the service is over capacity.
//!
//! A [`ConcurrencyLimitLayer`](crate::ConcurrencyLimitLayer) bounds how many requests run
//! and lets a few wait; a load shedder waits for nothing. It refuses a request the moment
//! the service is judged over capacity: too many requests in flight, or a standing queue
//! somewhere below it (the minimum time requests spend below the layer stays above a
//! target for a whole interval, as `CoDel` judges a network queue). Health checks and other
//! exempt requests always pass, and a critical class can keep a share of the capacity.

mod layer;
mod service;
mod sojourn;
#[cfg(test)]
mod tests;

pub(crate) use layer::Predicate;
pub use layer::{LoadShedLayer, LoadShedLayerBuilder};
pub use service::{LoadShed, LoadShedBody, ResponseFuture};
