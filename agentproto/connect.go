package agentproto

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// maxConnectLine bounds the CONNECT and OK lines; Firecracker reads at
// most 32 bytes of a CONNECT line.
const maxConnectLine = 32

// ConnectLine returns the line a host writes to open a stream to an agent
// port: "CONNECT <port>\n". It must be sent in one write, because
// Firecracker drops a connection whose first read is shorter than 10 bytes.
func ConnectLine(port uint32) []byte {
	return []byte("CONNECT " + strconv.FormatUint(uint64(port), 10) + "\n")
}

// OKLine returns the answer to a CONNECT line: "OK <hostPort>\n".
func OKLine(hostPort uint32) []byte {
	return []byte("OK " + strconv.FormatUint(uint64(hostPort), 10) + "\n")
}

// ReadLine reads one '\n'-terminated line of at most 32 bytes one byte at
// a time, so no byte after the newline is consumed from r.
func ReadLine(r io.Reader) (string, error) {
	var buf []byte
	var b [1]byte
	for len(buf) < maxConnectLine {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			if err == io.EOF && len(buf) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
		if b[0] == '\n' {
			return string(buf), nil
		}
		buf = append(buf, b[0])
	}
	return "", fmt.Errorf("line longer than %d bytes: %q", maxConnectLine, buf)
}

// ParseConnect parses a CONNECT line (without its newline). The keyword is
// case-insensitive, as in Firecracker.
func ParseConnect(line string) (uint32, error) {
	return parseKeywordPort(line, "CONNECT")
}

// ParseOK parses an OK line (without its newline) and returns the port.
func ParseOK(line string) (uint32, error) {
	return parseKeywordPort(line, "OK")
}

func parseKeywordPort(line, keyword string) (uint32, error) {
	word, num, ok := strings.Cut(line, " ")
	if !ok || !strings.EqualFold(word, keyword) {
		return 0, fmt.Errorf("invalid %s line %q", keyword, line)
	}
	port, err := strconv.ParseUint(num, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid %s line %q: port is not a u32", keyword, line)
	}
	return uint32(port), nil
}

// ReadConnectReply reads the OK line after a CONNECT through br and
// returns br so that bytes read past the line stay available to the caller.
func ReadConnectReply(br *bufio.Reader) (uint32, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return 0, err
	}
	return ParseOK(strings.TrimSuffix(line, "\n"))
}
