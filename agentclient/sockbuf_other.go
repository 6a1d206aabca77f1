//go:build !linux

package agentclient

import "net"

// growSocketBuffers leaves the buffers alone outside Linux.
func growSocketBuffers(net.Conn) {}
