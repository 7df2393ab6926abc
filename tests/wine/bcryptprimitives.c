/* Test-only stand-in for Windows' bcryptprimitives.dll, which Wine 8 lacks: Rust's std
 * (1.78+) imports ProcessPrng from it. Forwards to RtlGenRandom (SystemFunction036 in
 * advapi32). Real Windows 10/11 has the DLL; nothing of this ships. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    return SystemFunction036(data, (ULONG)length);
}
