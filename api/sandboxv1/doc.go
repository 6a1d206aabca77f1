// Package sandboxv1 is the Go code generated from
// proto/sandbox/v1/sandbox.proto: the messages and the gRPC clients and
// servers of hearth's sandbox.v1 API. Do not edit the .pb.go files;
// change the proto and run scripts/gen-proto.
//
// SandboxService and SandboxSnapshotService are wire-compatible with the
// sandbox.v1 API of arcbox-vm; SandboxControlService and the fields
// numbered from 100 on are hearth's additions.
package sandboxv1
