//! The shared data plane of mp-lb and mp-gather.
