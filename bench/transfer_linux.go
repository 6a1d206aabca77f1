package bench

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/agentproto"
)

// Goals of the file transfer measures.
var (
	uploadGoal       = &Goal{Kind: GoalMinRatio, Limit: 0.6}
	downloadGoal     = &Goal{Kind: GoalMinRatio, Limit: 0.7}
	transferRSSGoal  = &Goal{Kind: GoalMaxPeak, Limit: 64 << 20}
	transferChunk    = agentproto.DataChunk
	rssSamplePeriod  = 5 * time.Millisecond
	transferDeadline = 10 * time.Minute
)

// guestBlob is the guest path the transfers write and read. The
// Firecracker double bind-mounts /run/hearth from a directory of the
// sandbox on the host. It is the only guest directory large enough for
// 1 GiB, because the double's root is a 16 MiB tmpfs.
const guestBlob = "/run/hearth/bench.blob"

// runTransferGroup measures uploading and downloading one file through
// the agent on the Firecracker double against a copy of the same bytes
// over loopback TCP, and the memory both ends of the agent path grow by.
func (e *env) runTransferGroup(ctx context.Context) []Result {
	size := int64(e.iterations(1<<30, 64<<20))
	warmup, n := e.iterations(1, 1), e.iterations(10, 2)
	label := formatValue(float64(size), UnitBytes)

	floor := e.report(e.measureLoopback(size, warmup, n, label))
	results := []Result{floor, e.report(e.measureSHA256(size, warmup, n, label))}
	names := []struct{ name, title string }{
		{"transfer.upload", "upload " + label + " via agent, Firecracker double"},
		{"transfer.download", "download " + label + " via agent, Firecracker double"},
		{"transfer.rss.host", "RSS growth during transfers, host side"},
		{"transfer.rss.agent", "RSS growth during transfers, agent"},
	}
	fail := func(reason string) []Result {
		for _, r := range names {
			results = append(results, e.report(skipped(r.name, r.title, reason)))
		}
		return results
	}
	if reason := e.fcDoubleMissing(); reason != "" {
		return fail(reason)
	}

	t, err := e.startDoubleMachine(ctx, "bench-transfer")
	if err != nil {
		return fail("failed: " + err.Error())
	}
	defer t.close()
	results = append(results, e.report(e.measureFileWrite(t.dir, size, warmup, n, label)),
		e.report(e.measureFileRead(t.dir, size, warmup, n, label)))

	up, down := newTransferRun(), newTransferRun()
	for i := 0; i < warmup+n; i++ {
		timedRun := i >= warmup
		if err := up.add(timedRun, t.agentPID, func() error { return t.upload(ctx, size) }); err != nil {
			return fail("failed: " + err.Error())
		}
		if err := down.add(timedRun, t.agentPID, func() error { return t.download(ctx, size) }); err != nil {
			return fail("failed: " + err.Error())
		}
	}

	upload := timed(names[0].name, names[0].title, up.durations)
	upload.Floor, upload.RatioKind, upload.Goal = floorOf(floor), RatioThroughput, uploadGoal
	upload.Note = throughputNote(size, upload.Stats)
	download := timed(names[1].name, names[1].title, down.durations)
	download.Floor, download.RatioKind, download.Goal = floorOf(floor), RatioThroughput, downloadGoal
	download.Note = throughputNote(size, download.Stats)

	hostRSS := Result{Name: names[2].name, Title: names[2].title, Unit: UnitBytes,
		Stats: Summarize(append(up.hostGrowth, down.hostGrowth...)), Goal: transferRSSGoal,
		Note: "peak VmRSS minus VmRSS before each transfer, of the process running the agent client " +
			"(the daemon has no file API, so hearth-bench itself is the host side)"}
	agentRSS := Result{Name: names[3].name, Title: names[3].title, Unit: UnitBytes,
		Stats: Summarize(append(up.agentGrowth, down.agentGrowth...)), Goal: transferRSSGoal,
		Note: "peak VmRSS minus VmRSS before each transfer, of hearth-agent in the double's guest"}
	return append(results, e.report(upload), e.report(download), e.report(hostRSS), e.report(agentRSS))
}

func throughputNote(size int64, s Stats) string {
	if s.Median <= 0 {
		return ""
	}
	return fmt.Sprintf("%.0f MiB/s at the median", float64(size)/(1<<20)/s.Median)
}

// measureLoopback copies size bytes over a loopback TCP connection
// inside this process, through buffers of the agent's chunk size: the
// floor of any byte stream between two processes on this machine.
func (e *env) measureLoopback(size int64, warmup, n int, label string) Result {
	name, title := "transfer.floor.loopback", "floor: copy "+label+" over loopback TCP"
	samples, err := timeLoop(warmup, n, func() error { return loopbackCopy(size) })
	if err != nil {
		return skippedErr(name, title, err)
	}
	r := timed(name, title, samples)
	r.Note = throughputNote(size, r.Stats)
	return r
}

// measureSHA256 times one SHA-256 pass over size bytes in one goroutine.
// Both ends of a transfer through the agent compute one when the caller
// asks for SHA-256, so it bounds what such a transfer can reach on this
// machine. The default CRC-32C runs at memory speed.
func (e *env) measureSHA256(size int64, warmup, n int, label string) Result {
	name, title := "transfer.reference.sha256", "reference: SHA-256 of "+label+", one core"
	buf := make([]byte, transferChunk)
	samples, err := timeLoop(warmup, n, func() error {
		h := sha256.New()
		src := newPatternReader(size)
		for {
			n, err := src.Read(buf)
			h.Write(buf[:n])
			if err == io.EOF {
				return nil
			}
		}
	})
	if err != nil {
		return skippedErr(name, title, err)
	}
	r := timed(name, title, samples)
	r.Note = throughputNote(size, r.Stats) + "; breakdown: the transfers check CRC-32C by default, and each end would hash the bytes once with checksum sha256"
	return r
}

// measureFileWrite times what the agent's side of an upload does with
// the bytes alone, inside this process: write size bytes into a new file
// in dir, which is on the same file system as the double's /run/hearth,
// and rename it over the previous one. It explains the upload row.
func (e *env) measureFileWrite(dir string, size int64, warmup, n int, label string) Result {
	name, title := "transfer.reference.write", "reference: write "+label+" to a new file, same file system"
	target := filepath.Join(dir, "reference.blob")
	buf := make([]byte, transferChunk)
	samples, err := timeLoop(warmup, n, func() error {
		tmp := target + ".tmp"
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		src := newPatternReader(size)
		for {
			n, rerr := src.Read(buf)
			if _, err := f.Write(buf[:n]); err != nil {
				f.Close()
				return err
			}
			if rerr == io.EOF {
				break
			}
		}
		if err := f.Close(); err != nil {
			return err
		}
		return os.Rename(tmp, target)
	})
	if err != nil {
		return skippedErr(name, title, err)
	}
	r := timed(name, title, samples)
	r.Note = throughputNote(size, r.Stats) + "; breakdown: the agent's file writes and the freeing of the replaced file in an upload, without any transport"
	return r
}

// measureFileRead times reading the file measureFileWrite left, which is
// what the agent's side of a download does with the bytes alone. It
// removes the file afterwards.
func (e *env) measureFileRead(dir string, size int64, warmup, n int, label string) Result {
	name, title := "transfer.reference.read", "reference: read "+label+" from a file, same file system"
	target := filepath.Join(dir, "reference.blob")
	defer os.Remove(target)
	buf := make([]byte, transferChunk)
	samples, err := timeLoop(warmup, n, func() error {
		f, err := os.Open(target)
		if err != nil {
			return err
		}
		defer f.Close()
		got, err := drain(f, buf)
		if err == nil && got != size {
			err = fmt.Errorf("read %d bytes, want %d", got, size)
		}
		return err
	})
	if err != nil {
		return skippedErr(name, title, err)
	}
	r := timed(name, title, samples)
	r.Note = throughputNote(size, r.Stats) + "; breakdown: the agent's file reads in a download, without any transport"
	return r
}

func loopbackCopy(size int64) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen on loopback: %w", err)
	}
	defer ln.Close()
	received := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			received <- err
			return
		}
		defer c.Close()
		n, err := drain(c, make([]byte, transferChunk))
		if err == nil && n != size {
			err = fmt.Errorf("received %d bytes, want %d", n, size)
		}
		received <- err
	}()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return fmt.Errorf("dial loopback: %w", err)
	}
	defer c.Close()
	src := newPatternReader(size)
	buf := make([]byte, transferChunk)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, err := c.Write(buf[:n]); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			break
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	return <-received
}

// drain reads r to its end through buf and returns the byte count. It
// does not use io.Copy, whose io.Discard path reads 8 KiB at a time.
func drain(r io.Reader, buf []byte) (int64, error) {
	var total int64
	for {
		n, err := r.Read(buf)
		total += int64(n)
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// patternReader yields size bytes of a fixed pseudo-random 1 MiB block,
// repeated, without holding more than that block in memory.
type patternReader struct {
	remaining int64
	offset    int
}

var patternBlock = func() []byte {
	b := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}()

func newPatternReader(size int64) *patternReader { return &patternReader{remaining: size} }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.remaining == 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.remaining {
		b = b[:p.remaining]
	}
	n := copy(b, patternBlock[p.offset:])
	p.offset = (p.offset + n) % len(patternBlock)
	p.remaining -= int64(n)
	return n, nil
}

func (t *doubleMachine) upload(ctx context.Context, size int64) error {
	ctx, cancel := context.WithTimeout(ctx, transferDeadline)
	defer cancel()
	conn, err := t.machine.DialAgent(ctx, agentproto.PortFile)
	if err != nil {
		return err
	}
	opts := agentclient.WriteOptions{Path: guestBlob, Size: size}
	return agentclient.Upload(ctx, conn, opts, newPatternReader(size))
}

func (t *doubleMachine) download(ctx context.Context, size int64) error {
	ctx, cancel := context.WithTimeout(ctx, transferDeadline)
	defer cancel()
	conn, err := t.machine.DialAgent(ctx, agentproto.PortFile)
	if err != nil {
		return err
	}
	n, err := agentclient.Download(ctx, conn, guestBlob, discardWriter{})
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("downloaded %d bytes, want %d", n, size)
	}
	return nil
}

// discardWriter drops what it is given. Unlike io.Discard it has no
// ReadFrom, so the client's own buffering is what gets measured.
type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// transferRun collects the timings and memory growth of one direction.
type transferRun struct {
	durations   []time.Duration
	hostGrowth  []float64
	agentGrowth []float64
}

func newTransferRun() *transferRun { return &transferRun{} }

// add runs one transfer while sampling the RSS of this process and of
// the agent, and records it when timedRun is set.
func (r *transferRun) add(timedRun bool, agentPID int, transfer func() error) error {
	self := os.Getpid()
	hostBase, err := rssBytes(self)
	if err != nil {
		return err
	}
	agentBase, err := rssBytes(agentPID)
	if err != nil {
		return err
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var hostPeak, agentPeak int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		ticker := time.NewTicker(rssSamplePeriod)
		defer ticker.Stop()
		for {
			if v, err := rssBytes(self); err == nil {
				hostPeak = max(hostPeak, v)
			}
			if v, err := rssBytes(agentPID); err == nil {
				agentPeak = max(agentPeak, v)
			}
			select {
			case <-stop:
				return
			case <-ticker.C:
			}
		}
	}()

	start := time.Now()
	err = transfer()
	elapsed := time.Since(start)
	close(stop)
	wg.Wait()
	if err != nil || !timedRun {
		return err
	}
	r.durations = append(r.durations, elapsed)
	r.hostGrowth = append(r.hostGrowth, float64(max(0, hostPeak-hostBase)))
	r.agentGrowth = append(r.agentGrowth, float64(max(0, agentPeak-agentBase)))
	return nil
}
