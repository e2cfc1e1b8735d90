//! The init binary. Everything, `_start` included, lives in the library;
//! naming it here is what links it in.
#![no_std]
#![no_main]

extern crate pid1;
