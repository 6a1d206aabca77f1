//go:build !linux

package agentlink

import (
	"context"
	"errors"
)

// ServeVsock serves the given AF_VSOCK ports until ctx ends. AF_VSOCK
// listeners exist only on Linux, so it always fails here.
func ServeVsock(ctx context.Context, ports []uint32, h Handler) error {
	return errors.New("serve vsock: AF_VSOCK is only supported on Linux")
}
