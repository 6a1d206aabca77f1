package network

import "errors"

// Error kinds returned (wrapped) by this package. Callers test them with
// errors.Is and map them to API status codes.
var (
	// ErrInvalid marks an invalid pool configuration or argument.
	ErrInvalid = errors.New("invalid argument")
	// ErrExhausted marks a pool with no free guest address.
	ErrExhausted = errors.New("address pool exhausted")
	// ErrNotFound marks a sandbox ID without a lease.
	ErrNotFound = errors.New("lease not found")
	// ErrExists marks a sandbox ID that already has a lease, or a network
	// device name that is already taken.
	ErrExists = errors.New("already exists")
	// ErrUnavailable marks a host that cannot create TAP devices: no
	// /dev/net/tun, or not enough privilege.
	ErrUnavailable = errors.New("tap networking unavailable")
)
