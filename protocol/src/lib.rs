//! The tunnel protocol between the gateway and its agents.
//!
//! An agent keeps one QUIC connection (ALPN [`ALPN`]) to the gateway. On it:
//!
//! - the agent opens one **control stream** and sends [`AgentMessage::Hello`]; the
//!   gateway answers [`GatewayMessage::Welcome`] or [`GatewayMessage::Reject`], after
//!   which the agent sends periodic [`AgentMessage::Load`] reports;
//! - for every customer connection the gateway opens one **relay stream** and sends
//!   an [`OpenRequest`]; the agent answers one [`OpenReply`] and, if the target was
//!   dialled, both sides switch to raw bytes (no framing on the byte path);
//! - a side that ends the tunnel on purpose (an agent leaving, a gateway shutting
//!   down) first finishes its control stream and closes once the peer has it
//!   (`exitpool_transport::leave`), because a connection close alone can be lost.
//!
//! Every message is a [`frame`]: a 4-byte big-endian length, then a bincode 2 body.
//! The length is checked against [`MAX_FRAME_LEN`] before anything is allocated.
//! The target an `OpenRequest` names follows one grammar, [`host`], which both
//! the gateway and the agent parse with; [`close_code`] says why a tunnel was
//! closed, in both directions. An agent's id is not declared but proven:
//! [`identity`] derives it from a device key that signs each connection.
//! Gateways of one fleet carry customers to each other's exits over the
//! [`peer`] link, with the same `OpenReply` and raw bytes after it. A relay
//! stream may instead carry a UDP flow ([`udp`]). Both local
//! HTTP endpoints (admin, agent status) refuse web pages by [`local_http`].
//!
//! This crate is pure: without its `tokio` feature (on by default, for
//! `read_frame`/`write_frame`) it does no I/O. What moves bytes (the relay,
//! UDP sockets, leaving a tunnel) is `exitpool_transport`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod frame;
pub mod host;
pub mod identity;
pub mod local_http;
pub mod messages;
pub mod peer;
pub mod udp;

pub use frame::{decode, decode_body, encode, hello_version, FrameError, MAX_FRAME_LEN};
#[cfg(feature = "tokio")]
pub use frame::{read_frame, read_frame_body, write_frame};
pub use host::{parse_authority, parse_host, parse_port, AuthorityError, HostError};
pub use identity::{DeviceKey, IdentityError, IdentityProof};
pub use messages::*;
