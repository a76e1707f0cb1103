//! The NFSv4.1 client (`location::nfs::v4`) against nfs-ganesha, a scripted RPC server and
//! hostile replies. One binary: the modules share the servers of `common`.

mod common;
mod fuzz;
mod ops;
mod outage;
mod rpc;
