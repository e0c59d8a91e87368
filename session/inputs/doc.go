// Package inputs brings the files an execution reads into its kernel's
// input directory: downloads of the URLs a request names (Fetcher, with
// SSRF protection and limits: every address a download reaches is checked
// against the policy, redirects included) and the names given to them and
// to uploads (SanitizeName).
//
// It needs no kernel: the session layer calls Fetcher.Fetch before an
// execution.
package inputs

// KernelDir is the input directory as the kernel sees it. Both
// provisioners bind the session's input directory there.
const KernelDir = "/code/input"
