// Package files handles everything about the files around an execution:
// downloading input files into a session's input directory (with SSRF
// protection and limits), collecting the files the code wrote to its output
// directory, the on-disk image and file stores the gateway serves, and
// stripping a markdown code fence from submitted code.
//
// It needs no kernel: the session layer calls Fetcher.Fetch before an
// execution and Collect after it, and the gateway serves Store.Open.
package files

// Paths of the input and output directories as the kernel sees them. Both
// provisioners bind the session's directories there.
const (
	KernelInputDir  = "/code/input"
	KernelOutputDir = "/code/output"
)
