// Package fcdouble is a test double of the Firecracker VMM and its jailer,
// used to test hearth's Firecracker driver on hosts that cannot run
// Firecracker. It is as strict as the real binary where the driver's
// correctness depends on it:
//
//   - Request bodies: unknown fields are rejected per the version the
//     double claims (--claim-version), as are missing required fields,
//     values outside an enum or range, and resource ids other than
//     [A-Za-z0-9_] or differing between path and body.
//   - Phases: pre-boot calls after boot, post-boot calls before it, and a
//     snapshot load after anything but the logger and metrics are
//     rejected; a failed load ends the process.
//   - HTTP: bodies over --http-api-max-payload-size, chunked bodies and GET
//     bodies get 400 with the {"error": ...} shape; calls are handled one
//     at a time.
//   - Sockets: an existing --api-sock file makes the process exit, as does
//     an invalid --id (with a panic-like message); the vsock socket is
//     bound during PUT /vsock and fails if the file exists; no socket file
//     is removed on exit.
//
// The guest is the real hearth-agent in serve-only mode, started on
// InstanceStart (or snapshot load) in new mount, UTS, network and PID
// namespaces with a throwaway tmpfs root. The double serves the hybrid
// vsock socket itself, reading the CONNECT line the way Firecracker does,
// and relays each stream to the agent with splice(2), so its own copying
// adds little to what a transfer measures. It exits 0 when the agent
// exits, as Firecracker does after a guest reboot.
//
// Run jailed as a uid other than root, the double also requires each TAP
// given in PUT /network-interfaces to exist in its network namespace and
// to be owned by the jailed uid and gid, because a jailed Firecracker
// without CAP_NET_ADMIN can neither create a TAP nor open another user's.
//
// Flags that exist only in the double inject faults: --fail-instance-start,
// --ignore-ctrl-alt-del, --hang-on-reboot (the process stays after the
// agent exits) and --guest-boot-delay (the agent starts late).
//
// The fake jailer checks its arguments as the real jailer does and builds
// the chroot layout, but it does not pivot_root, chroot or drop
// privileges, because the double needs root to create the guest's
// namespaces. Instead it starts the fake Firecracker with its working
// directory at the chroot and the flag --jail-root, and the double
// resolves every path it receives against that root and checks that the
// jailed uid and gid could open it. Paths that would escape the root are
// rejected.
package fcdouble
