// Package network gives each sandbox a host TAP device and an IPv4 address
// from a pool.
//
// A Pool hands out guest addresses from one IPv4 network and records every
// lease in a state file under the data directory. All hearth processes on
// the host that use that directory, a daemon and any number of one-shot
// runs, share one set of leases. CreateTAP and DeleteTAP manage the point-to-point TAP
// device that links the host to one guest. An Allocator combines the two
// for the sandbox manager: Acquire leases an address and creates its TAP,
// Release deletes the TAP and ends the lease.
//
// The package owns no firewall rules, NAT, bridges or DNS, and it never
// configures the guest side: the guest learns its address from the kernel
// argument that Lease.KernelArg builds. Sandboxes without a network simply
// never call Acquire.
package network
