package sandboxv1_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

// contractFile compiles testdata/contract.proto with protoc.
func contractFile(t *testing.T) protoreflect.FileDescriptor {
	t.Helper()
	protoc, err := exec.LookPath("protoc")
	if err != nil {
		t.Skip("protoc not found; install the Debian package protobuf-compiler (scripts/install-deps)")
	}
	out := filepath.Join(t.TempDir(), "contract.pb")
	cmd := exec.Command(protoc, "--proto_path=testdata", "--descriptor_set_out="+out, "contract.proto")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("protoc: %v\n%s", err, msg)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(data, &set); err != nil {
		t.Fatalf("decode descriptor set: %v", err)
	}
	if len(set.GetFile()) != 1 {
		t.Fatalf("descriptor set: got %d files, want 1", len(set.GetFile()))
	}
	fd, err := protodesc.NewFile(set.GetFile()[0], nil)
	if err != nil {
		t.Fatalf("build contract descriptor: %v", err)
	}
	return fd
}

func TestContractServices(t *testing.T) {
	contract := contractFile(t)
	ours := sandboxv1.File_sandbox_v1_sandbox_proto
	if got, want := ours.Package(), contract.Package(); got != want {
		t.Fatalf("package: got %s, want %s", got, want)
	}
	for i := 0; i < contract.Services().Len(); i++ {
		want := contract.Services().Get(i)
		got := ours.Services().ByName(want.Name())
		if got == nil {
			t.Errorf("service %s is missing", want.FullName())
			continue
		}
		for j := 0; j < want.Methods().Len(); j++ {
			wm := want.Methods().Get(j)
			gm := got.Methods().ByName(wm.Name())
			if gm == nil {
				t.Errorf("method %s is missing", wm.FullName())
				continue
			}
			if gm.Input().FullName() != wm.Input().FullName() || gm.Output().FullName() != wm.Output().FullName() {
				t.Errorf("method %s: got %s -> %s, want %s -> %s", wm.FullName(),
					gm.Input().FullName(), gm.Output().FullName(), wm.Input().FullName(), wm.Output().FullName())
			}
			if gm.IsStreamingClient() != wm.IsStreamingClient() || gm.IsStreamingServer() != wm.IsStreamingServer() {
				t.Errorf("method %s: got client/server streaming %v/%v, want %v/%v", wm.FullName(),
					gm.IsStreamingClient(), gm.IsStreamingServer(), wm.IsStreamingClient(), wm.IsStreamingServer())
			}
		}
	}
}

func TestContractMessages(t *testing.T) {
	contract := contractFile(t)
	ours := sandboxv1.File_sandbox_v1_sandbox_proto
	for i := 0; i < contract.Messages().Len(); i++ {
		want := contract.Messages().Get(i)
		got := ours.Messages().ByName(want.Name())
		if got == nil {
			t.Errorf("message %s is missing", want.FullName())
			continue
		}
		compareFields(t, got, want)
		for r := 0; r < want.ReservedRanges().Len(); r++ {
			for n := want.ReservedRanges().Get(r)[0]; n < want.ReservedRanges().Get(r)[1]; n++ {
				if !got.ReservedRanges().Has(n) {
					t.Errorf("message %s: field number %d is not reserved", want.FullName(), n)
				}
			}
		}
	}
}

// compareFields checks that every field of want exists in got with the
// same number, type, cardinality, presence and oneof.
func compareFields(t *testing.T, got, want protoreflect.MessageDescriptor) {
	t.Helper()
	for i := 0; i < want.Fields().Len(); i++ {
		wf := want.Fields().Get(i)
		gf := got.Fields().ByNumber(wf.Number())
		if gf == nil {
			t.Errorf("field %s (number %d) is missing", wf.FullName(), wf.Number())
			continue
		}
		checks := []struct {
			what      string
			got, want any
		}{
			{"name", gf.Name(), wf.Name()},
			{"kind", gf.Kind(), wf.Kind()},
			{"cardinality", gf.Cardinality(), wf.Cardinality()},
			{"map", gf.IsMap(), wf.IsMap()},
			{"explicit presence", gf.HasPresence(), wf.HasPresence()},
			{"oneof", oneofName(gf), oneofName(wf)},
			{"message type", messageName(gf), messageName(wf)},
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Errorf("field %s (number %d) %s: got %v, want %v", wf.FullName(), wf.Number(), c.what, c.got, c.want)
			}
		}
		if wf.IsMap() && gf.IsMap() {
			if gf.MapKey().Kind() != wf.MapKey().Kind() || gf.MapValue().Kind() != wf.MapValue().Kind() {
				t.Errorf("field %s: got map<%s,%s>, want map<%s,%s>", wf.FullName(),
					gf.MapKey().Kind(), gf.MapValue().Kind(), wf.MapKey().Kind(), wf.MapValue().Kind())
			}
		}
	}
}

// oneofName returns the name of a real oneof containing f. The synthetic
// oneof of a proto3 optional field counts as none, because presence is
// compared separately.
func oneofName(f protoreflect.FieldDescriptor) protoreflect.Name {
	if o := f.ContainingOneof(); o != nil && !o.IsSynthetic() {
		return o.Name()
	}
	return ""
}

func messageName(f protoreflect.FieldDescriptor) protoreflect.FullName {
	if f.IsMap() || f.Message() == nil {
		return ""
	}
	return f.Message().FullName()
}

// TestAdditionsUseNewNumbers checks that hearth's fields in contract
// messages use numbers from 100 on, which the contract leaves free.
func TestAdditionsUseNewNumbers(t *testing.T) {
	contract := contractFile(t)
	ours := sandboxv1.File_sandbox_v1_sandbox_proto
	for i := 0; i < contract.Messages().Len(); i++ {
		want := contract.Messages().Get(i)
		got := ours.Messages().ByName(want.Name())
		if got == nil {
			continue
		}
		for j := 0; j < got.Fields().Len(); j++ {
			f := got.Fields().Get(j)
			if want.Fields().ByNumber(f.Number()) == nil && f.Number() < 100 {
				t.Errorf("hearth field %s has number %d, want 100 or more", f.FullName(), f.Number())
			}
		}
	}
}
