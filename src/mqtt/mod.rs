//! MQTT: the wire codec, the broker core, and the network listeners that connect the two.

pub mod broker;
pub mod codec;
pub mod net;
