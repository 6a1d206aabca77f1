package server

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearthvm/hearth/sandbox"
)

// toStatus maps an error of the sandbox manager to a gRPC status. It is
// the only place where error kinds become codes. An error that already is
// a status passes through unchanged.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codeOf(err), err.Error())
}

func codeOf(err error) codes.Code {
	switch {
	case errors.Is(err, sandbox.ErrNotFound):
		return codes.NotFound
	case errors.Is(err, sandbox.ErrAlreadyExists):
		return codes.AlreadyExists
	case errors.Is(err, sandbox.ErrWrongState):
		return codes.FailedPrecondition
	case errors.Is(err, sandbox.ErrInvalidArgument):
		return codes.InvalidArgument
	case errors.Is(err, sandbox.ErrResourceExhausted), errors.Is(err, sandbox.ErrEventsOverflow):
		return codes.ResourceExhausted
	case errors.Is(err, sandbox.ErrUnavailable):
		return codes.Unavailable
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	default:
		return codes.Internal
	}
}

// invalidArgument returns an InvalidArgument status for a request field.
func invalidArgument(field, reason string) error {
	return status.Errorf(codes.InvalidArgument, "invalid %s: %s", field, reason)
}

// LogErrors returns interceptors that log each failed RPC once, with its
// method and code. Errors caused by the client going away (Canceled) are
// logged at debug level only.
func LogErrors(log *slog.Logger) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	record := func(ctx context.Context, method string, err error) {
		if err == nil {
			return
		}
		code := status.Code(err)
		level := slog.LevelWarn
		switch code {
		case codes.Canceled:
			level = slog.LevelDebug
		case codes.Internal, codes.Unknown, codes.DataLoss:
			level = slog.LevelError
		}
		log.Log(ctx, level, "rpc failed", "method", method, "code", code.String(), "err", status.Convert(err).Message())
	}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		record(ctx, info.FullMethod, err)
		return resp, err
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		err := handler(srv, ss)
		record(ss.Context(), info.FullMethod, err)
		return err
	}
	return unary, stream
}
