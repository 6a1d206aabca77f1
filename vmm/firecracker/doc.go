// Package firecracker is hearth's Firecracker driver: it implements
// vmm.Driver and vmm.Machine by running one Firecracker process per
// sandbox, directly or under the jailer, and configuring it through the
// API client in package api.
//
// The driver owns the Firecracker process and the files it prepares for
// it: the API and vsock sockets, the log and metrics files, the console
// log, the sandbox's private copy of the root image and, in jailer mode,
// the chroot. It does not create TAP devices, network namespaces or
// cgroups; the caller passes those in. Driver.TAPPlacement tells the
// caller where a jailed Firecracker can open its TAP: in the jail's
// network namespace, owned by the jailed uid and gid.
//
// In direct mode every file lives in the sandbox directory, which is
// Firecracker's working directory, and Firecracker gets absolute paths,
// except for the root drive: its path is relative, so the state file of
// a snapshot names the drive of whichever sandbox restores it. In jailer
// mode the chroot is
// <chroot base>/<resolved firecracker file name>/<id>/root, every path
// sent to Firecracker is relative to it, and the sockets live in its run/
// directory, the only directory the jailed user may write.
//
// Every host socket path must fit in sun_path (107 usable bytes). The
// driver checks the API socket, the vsock socket and the vsock socket of
// the largest agent port, <vsock>_54, before it creates or starts
// anything. In jailer mode these paths include the chroot base directory
// after symbolic links are resolved, as the jailer resolves it.
package firecracker
