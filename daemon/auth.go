package daemon

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// errUnauthenticated does not reveal what was wrong with a token and never
// contains it.
var errUnauthenticated = status.Error(codes.Unauthenticated,
	`missing or invalid bearer token: send the metadata "authorization: Bearer <token>" with the token of [grpc].token_file`)

// tokenAuth checks the bearer token of every call on the TCP listener.
type tokenAuth struct {
	// digest is the SHA-256 of the token. Comparing digests in constant
	// time hides the token's length as well as its content.
	digest [sha256.Size]byte
}

// readToken reads the token file; surrounding whitespace is not part of
// the token.
func readToken(path string) (*tokenAuth, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read [grpc].token_file: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return nil, fmt.Errorf("[grpc].token_file %s is empty; write a random token into it, e.g. with: openssl rand -hex 32", path)
	}
	return &tokenAuth{digest: sha256.Sum256([]byte(token))}, nil
}

func (a *tokenAuth) check(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		scheme, token, ok := strings.Cut(v, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			continue
		}
		digest := sha256.Sum256([]byte(strings.TrimSpace(token)))
		if subtle.ConstantTimeCompare(digest[:], a.digest[:]) == 1 {
			return nil
		}
	}
	return errUnauthenticated
}

func (a *tokenAuth) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := a.check(ctx); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (a *tokenAuth) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := a.check(ss.Context()); err != nil {
		return err
	}
	return handler(srv, ss)
}

// loadTLS loads the TCP listener's certificate and key.
func loadTLS(certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load [grpc].tls_cert %s and [grpc].tls_key %s: %w", certFile, keyFile, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
