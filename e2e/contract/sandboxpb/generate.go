// Package sandboxpb is a client and server stub of the sandbox.v1 API
// generated from the independent statement of the wire contract
// (sandbox_v1.proto of the shared contracts directory), not from hearth's
// own proto/sandbox/v1/sandbox.proto. A test built on it fails when
// hearth's API drifts from the contract. It must never be linked into a
// binary together with hearth's api/sandboxv1: both register the proto
// package sandbox.v1.
//
// The files were generated with protoc 3.21.12, protoc-gen-go v1.36.12 and
// protoc-gen-go-grpc 1.6.2 (the versions scripts/gen-proto installs), from
// the directory e2e/contract, by the command below. The contract test
// runs the same command into a temporary directory and compares.
//
//	protoc --proto_path=<shared>/contracts \
//	  --go_out=sandboxpb --go_opt=paths=source_relative \
//	  --go_opt=Msandbox_v1.proto=github.com/hearthvm/hearth/e2e/contract/sandboxpb \
//	  --go-grpc_out=sandboxpb --go-grpc_opt=paths=source_relative \
//	  --go-grpc_opt=Msandbox_v1.proto=github.com/hearthvm/hearth/e2e/contract/sandboxpb \
//	  sandbox_v1.proto
package sandboxpb
