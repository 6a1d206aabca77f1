package firecracker

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// KVM ioctls (linux/kvm.h).
const (
	kvmGetAPIVersion     = 0xAE00
	kvmCreateVM          = 0xAE01
	kvmGetSupportedCPUID = 0xC008AE05
	kvmAPIVersion        = 12
)

type cpuidEntry struct {
	Function, Index, Flags, EAX, EBX, ECX, EDX uint32
	_                                          [3]uint32
}

type cpuid struct {
	N, _    uint32
	Entries [256]cpuidEntry
}

// ProbeKVM checks that /dev/kvm opens, speaks API version 12, creates a
// VM, and offers the CPU features a standard x86-64 guest kernel uses
// (SSE3, CMPXCHG16B, long mode). Nested hypervisors that expose /dev/kvm
// without them accept a VM and then run the guest extremely slowly or
// fail deep into boot, so the feature check is what tells them apart.
func ProbeKVM() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open /dev/kvm: %w", err)
	}
	defer f.Close()
	fd := f.Fd()
	v, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, kvmGetAPIVersion, 0)
	if errno != 0 || v != kvmAPIVersion {
		return fmt.Errorf("/dev/kvm API version %d (%v), want %d", v, errno, kvmAPIVersion)
	}
	vm, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, kvmCreateVM, 0)
	if errno != 0 {
		return fmt.Errorf("/dev/kvm rejected KVM_CREATE_VM: %w", errno)
	}
	unix.Close(int(vm))

	var c cpuid
	c.N = uint32(len(c.Entries))
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, kvmGetSupportedCPUID, uintptr(unsafe.Pointer(&c))); errno != 0 {
		return fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", errno)
	}
	var leaf1, ext1 *cpuidEntry
	for i := range c.Entries[:c.N] {
		switch c.Entries[i].Function {
		case 1:
			leaf1 = &c.Entries[i]
		case 0x80000001:
			ext1 = &c.Entries[i]
		}
	}
	switch {
	case leaf1 == nil || ext1 == nil:
		return fmt.Errorf("KVM reports no CPUID leaf 1 or 0x80000001")
	case leaf1.ECX&(1<<0) == 0:
		return fmt.Errorf("KVM does not offer SSE3 (pni) to guests")
	case leaf1.ECX&(1<<13) == 0:
		return fmt.Errorf("KVM does not offer CMPXCHG16B to guests")
	case ext1.EDX&(1<<29) == 0:
		return fmt.Errorf("KVM does not offer long mode to guests")
	}
	return nil
}
