package bench

import "context"

// runGroup runs the measures of one group.
func runGroup(ctx context.Context, e *env, group string) []Result {
	switch group {
	case GroupExec:
		return e.runExecGroup(ctx)
	case GroupTransfer:
		return e.runTransferGroup(ctx)
	case GroupCreate:
		return e.runCreateGroup(ctx)
	case GroupQEMU:
		return e.runQEMUGroup(ctx)
	case GroupMemory:
		return e.runMemoryGroup(ctx)
	}
	return nil
}
