// Package api is a typed client for the Firecracker HTTP API, spoken over
// the API Unix socket of one Firecracker process.
//
// The client sends HTTP/1.1 requests with JSON bodies and a Content-Length
// header, never chunked bodies, because Firecracker's HTTP server
// (micro_http) reads bodies by Content-Length only. Firecracker handles one
// request at a time, so a slow call delays every other call: each call has
// its own timeout, with a longer default for snapshot create and load.
//
// Every Firecracker request type rejects JSON fields it does not know, so
// a field sent to an older binary fails the whole request. The client
// learns the binary's version (GET /version) before the first request that
// has a version-dependent field, and returns an error wrapping
// ErrUnsupported when the caller requests a feature that version lacks,
// instead of dropping the field silently. The per-field decisions:
//
//   - NetworkInterface.MTU (Firecracker 1.16.0+): error on older versions.
//   - SnapshotLoad.NetworkOverrides (1.12.0+): error on older versions.
//   - SnapshotLoad.VsockOverride (1.16.0+): error on older versions.
//   - SnapshotLoad.ClockRealtime (1.16.0+): true is an error on older
//     versions; false is the default and is left out of the body.
//   - SnapshotLoad.TrackDirtyPages: sent as track_dirty_pages from 1.13.0,
//     and as the deprecated enable_diff_snapshots before, which has the
//     same meaning.
//   - SnapshotLoad always sends mem_backend, which needs 1.1.0; older
//     versions are rejected.
//
// The client is hand-written rather than built on firecracker-go-sdk. That
// SDK's newest release is v1.0.0, and its changelog ends with MMDS version
// 2, the drive IO engine and snapshot load by memory file; it has none of
// network_overrides, vsock_override, clock_realtime, the interface MTU or
// any version gating, and its generated models cannot be told which fields
// a given binary accepts.
//
// The package owns no process: it only talks to a socket that a driver
// created.
package api
