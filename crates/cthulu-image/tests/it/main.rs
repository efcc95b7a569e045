//! Integration tests of cthulu-image: building real images from Debian's packages (with a
//! shared download cache), opening broken ones, root filesystems from directories and
//! hostile OCI tarballs, and booting an image under QEMU.

mod boot;
mod build;
mod open;
mod rootfs;
mod support;
