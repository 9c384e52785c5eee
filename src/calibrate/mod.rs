//! Calibration: run sample inputs through tract and observe every float tensor the quantizer
//! needs a range for, with streaming observers whose memory does not grow with the number of
//! samples; then turn each tensor's statistics into a range by MinMax, Percentile, Entropy (KL)
//! or MSE-optimal search.

pub mod data;
pub mod observer;
pub mod range;
