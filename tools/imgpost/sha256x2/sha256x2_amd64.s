//go:build amd64 && !purego

#include "textflag.h"

// Two-lane SHA-256 block function using the x86 SHA extensions (SHA-NI).

// Register plan (16 XMM registers):
//
//	X0        implicit message+constant operand of SHA256RNDS2
//	X1, X2    per-lane W+K (lane 0 / lane 1); also scratch
//	X3        PSHUFB byte-swap mask
//	X4, X5    lane 0 state, ABEF / CDGH layout
//	X6..X9    lane 0 message schedule, four words per register, rotating
//	X10, X11  lane 1 state, ABEF / CDGH layout
//	X12..X15  lane 1 message schedule
//
// ABEF means dword 3 = a, 2 = b, 1 = e, 0 = f; CDGH likewise. The state at the
// start of each block is saved in the 64-byte frame for the feed-forward add.

// Load one 16-byte chunk of each lane's block at offset off and convert it to
// four big-endian message words.
#define LOADMSG(off, A, B) \
	MOVOU off(SI), A; \
	MOVOU off(DI), B; \
	PSHUFB X3, A; \
	PSHUFB X3, B

// Compute the next four message words of both lanes in place of the oldest
// four. Aa..Ad hold W[t-16..t-13], W[t-12..t-9], W[t-8..t-5], W[t-4..t-1] of
// lane 0 (Ba..Bd of lane 1); the result W[t..t+3] replaces Aa (Ba).
#define SCHED(Aa, Ab, Ac, Ad, Ba, Bb, Bc, Bd) \
	SHA256MSG1 Ab, Aa; \
	SHA256MSG1 Bb, Ba; \
	MOVO Ad, X1; \
	MOVO Bd, X2; \
	PALIGNR $4, Ac, X1; \
	PALIGNR $4, Bc, X2; \
	PADDD X1, Aa; \
	PADDD X2, Ba; \
	SHA256MSG2 Ad, Aa; \
	SHA256MSG2 Bd, Ba

// Four rounds of both lanes using message words A (lane 0), B (lane 1) and the
// round constants at k256+koff. The lanes alternate instruction by
// instruction so that each lane's SHA256RNDS2 runs while the other's waits.
// After two SHA256RNDS2 each lane's state is back in its ABEF/CDGH registers.
#define ROUNDS4(koff, A, B) \
	MOVOU k256<>+koff(SB), X1; \
	MOVO X1, X2; \
	PADDD A, X1; \
	PADDD B, X2; \
	MOVO X1, X0; \
	SHA256RNDS2 X0, X4, X5; \
	MOVO X2, X0; \
	SHA256RNDS2 X0, X10, X11; \
	PSHUFD $0x0e, X1, X0; \
	SHA256RNDS2 X0, X5, X4; \
	PSHUFD $0x0e, X2, X0; \
	SHA256RNDS2 X0, X11, X10

// Convert a state in natural order a..h at ptr to ABEF/CDGH registers.
#define LOADSTATE(ptr, ABEF, CDGH) \
	MOVOU 0(ptr), ABEF; \
	MOVOU 16(ptr), CDGH; \
	PSHUFD $0xb1, ABEF, ABEF; \
	PSHUFD $0x1b, CDGH, CDGH; \
	MOVO ABEF, X1; \
	PALIGNR $8, CDGH, ABEF; \
	PBLENDW $0xf0, X1, CDGH

// Convert ABEF/CDGH registers back to natural order and store at ptr.
#define STORESTATE(ptr, ABEF, CDGH) \
	PSHUFD $0x1b, ABEF, ABEF; \
	PSHUFD $0xb1, CDGH, CDGH; \
	MOVO ABEF, X1; \
	PBLENDW $0xf0, CDGH, ABEF; \
	PALIGNR $8, X1, CDGH; \
	MOVOU ABEF, 0(ptr); \
	MOVOU CDGH, 16(ptr)

// func blocks2(s0, s1 *[8]uint32, p0, p1 *byte, n int)
TEXT ·blocks2(SB), NOSPLIT, $64-40
	MOVQ s0+0(FP), AX
	MOVQ s1+8(FP), BX
	MOVQ p0+16(FP), SI
	MOVQ p1+24(FP), DI
	MOVQ n+32(FP), CX
	TESTQ CX, CX
	JLE  done

	MOVOU bswapMask<>(SB), X3
	LOADSTATE(AX, X4, X5)
	LOADSTATE(BX, X10, X11)

loop:
	MOVOU X4, 0(SP)
	MOVOU X5, 16(SP)
	MOVOU X10, 32(SP)
	MOVOU X11, 48(SP)

	LOADMSG(0, X6, X12)
	ROUNDS4(0x00, X6, X12)
	LOADMSG(16, X7, X13)
	ROUNDS4(0x10, X7, X13)
	LOADMSG(32, X8, X14)
	ROUNDS4(0x20, X8, X14)
	LOADMSG(48, X9, X15)
	ROUNDS4(0x30, X9, X15)

	SCHED(X6, X7, X8, X9, X12, X13, X14, X15)
	ROUNDS4(0x40, X6, X12)
	SCHED(X7, X8, X9, X6, X13, X14, X15, X12)
	ROUNDS4(0x50, X7, X13)
	SCHED(X8, X9, X6, X7, X14, X15, X12, X13)
	ROUNDS4(0x60, X8, X14)
	SCHED(X9, X6, X7, X8, X15, X12, X13, X14)
	ROUNDS4(0x70, X9, X15)

	SCHED(X6, X7, X8, X9, X12, X13, X14, X15)
	ROUNDS4(0x80, X6, X12)
	SCHED(X7, X8, X9, X6, X13, X14, X15, X12)
	ROUNDS4(0x90, X7, X13)
	SCHED(X8, X9, X6, X7, X14, X15, X12, X13)
	ROUNDS4(0xa0, X8, X14)
	SCHED(X9, X6, X7, X8, X15, X12, X13, X14)
	ROUNDS4(0xb0, X9, X15)

	SCHED(X6, X7, X8, X9, X12, X13, X14, X15)
	ROUNDS4(0xc0, X6, X12)
	SCHED(X7, X8, X9, X6, X13, X14, X15, X12)
	ROUNDS4(0xd0, X7, X13)
	SCHED(X8, X9, X6, X7, X14, X15, X12, X13)
	ROUNDS4(0xe0, X8, X14)
	SCHED(X9, X6, X7, X8, X15, X12, X13, X14)
	ROUNDS4(0xf0, X9, X15)

	// Feed-forward: add the state saved at the start of the block.
	MOVOU 0(SP), X1
	MOVOU 16(SP), X2
	PADDD X1, X4
	PADDD X2, X5
	MOVOU 32(SP), X1
	MOVOU 48(SP), X2
	PADDD X1, X10
	PADDD X2, X11

	ADDQ $64, SI
	ADDQ $64, DI
	DECQ CX
	JNZ  loop

	STORESTATE(AX, X4, X5)
	STORESTATE(BX, X10, X11)

done:
	RET

// func cpuid(leaf, sub uint32) (eax, ebx, ecx, edx uint32)
TEXT ·cpuid(SB), NOSPLIT, $0-24
	MOVL leaf+0(FP), AX
	MOVL sub+4(FP), CX
	CPUID
	MOVL AX, eax+8(FP)
	MOVL BX, ebx+12(FP)
	MOVL CX, ecx+16(FP)
	MOVL DX, edx+20(FP)
	RET

// PSHUFB mask reversing the bytes of each dword.
DATA bswapMask<>+0(SB)/8, $0x0405060700010203
DATA bswapMask<>+8(SB)/8, $0x0c0d0e0f08090a0b
GLOBL bswapMask<>(SB), RODATA|NOPTR, $16

// SHA-256 round constants: the first 32 bits of the fractional parts of the
// cube roots of the first 64 primes (FIPS 180-4, 4.2.2).
DATA k256<>+0x000(SB)/4, $0x428a2f98
DATA k256<>+0x004(SB)/4, $0x71374491
DATA k256<>+0x008(SB)/4, $0xb5c0fbcf
DATA k256<>+0x00c(SB)/4, $0xe9b5dba5
DATA k256<>+0x010(SB)/4, $0x3956c25b
DATA k256<>+0x014(SB)/4, $0x59f111f1
DATA k256<>+0x018(SB)/4, $0x923f82a4
DATA k256<>+0x01c(SB)/4, $0xab1c5ed5
DATA k256<>+0x020(SB)/4, $0xd807aa98
DATA k256<>+0x024(SB)/4, $0x12835b01
DATA k256<>+0x028(SB)/4, $0x243185be
DATA k256<>+0x02c(SB)/4, $0x550c7dc3
DATA k256<>+0x030(SB)/4, $0x72be5d74
DATA k256<>+0x034(SB)/4, $0x80deb1fe
DATA k256<>+0x038(SB)/4, $0x9bdc06a7
DATA k256<>+0x03c(SB)/4, $0xc19bf174
DATA k256<>+0x040(SB)/4, $0xe49b69c1
DATA k256<>+0x044(SB)/4, $0xefbe4786
DATA k256<>+0x048(SB)/4, $0x0fc19dc6
DATA k256<>+0x04c(SB)/4, $0x240ca1cc
DATA k256<>+0x050(SB)/4, $0x2de92c6f
DATA k256<>+0x054(SB)/4, $0x4a7484aa
DATA k256<>+0x058(SB)/4, $0x5cb0a9dc
DATA k256<>+0x05c(SB)/4, $0x76f988da
DATA k256<>+0x060(SB)/4, $0x983e5152
DATA k256<>+0x064(SB)/4, $0xa831c66d
DATA k256<>+0x068(SB)/4, $0xb00327c8
DATA k256<>+0x06c(SB)/4, $0xbf597fc7
DATA k256<>+0x070(SB)/4, $0xc6e00bf3
DATA k256<>+0x074(SB)/4, $0xd5a79147
DATA k256<>+0x078(SB)/4, $0x06ca6351
DATA k256<>+0x07c(SB)/4, $0x14292967
DATA k256<>+0x080(SB)/4, $0x27b70a85
DATA k256<>+0x084(SB)/4, $0x2e1b2138
DATA k256<>+0x088(SB)/4, $0x4d2c6dfc
DATA k256<>+0x08c(SB)/4, $0x53380d13
DATA k256<>+0x090(SB)/4, $0x650a7354
DATA k256<>+0x094(SB)/4, $0x766a0abb
DATA k256<>+0x098(SB)/4, $0x81c2c92e
DATA k256<>+0x09c(SB)/4, $0x92722c85
DATA k256<>+0x0a0(SB)/4, $0xa2bfe8a1
DATA k256<>+0x0a4(SB)/4, $0xa81a664b
DATA k256<>+0x0a8(SB)/4, $0xc24b8b70
DATA k256<>+0x0ac(SB)/4, $0xc76c51a3
DATA k256<>+0x0b0(SB)/4, $0xd192e819
DATA k256<>+0x0b4(SB)/4, $0xd6990624
DATA k256<>+0x0b8(SB)/4, $0xf40e3585
DATA k256<>+0x0bc(SB)/4, $0x106aa070
DATA k256<>+0x0c0(SB)/4, $0x19a4c116
DATA k256<>+0x0c4(SB)/4, $0x1e376c08
DATA k256<>+0x0c8(SB)/4, $0x2748774c
DATA k256<>+0x0cc(SB)/4, $0x34b0bcb5
DATA k256<>+0x0d0(SB)/4, $0x391c0cb3
DATA k256<>+0x0d4(SB)/4, $0x4ed8aa4a
DATA k256<>+0x0d8(SB)/4, $0x5b9cca4f
DATA k256<>+0x0dc(SB)/4, $0x682e6ff3
DATA k256<>+0x0e0(SB)/4, $0x748f82ee
DATA k256<>+0x0e4(SB)/4, $0x78a5636f
DATA k256<>+0x0e8(SB)/4, $0x84c87814
DATA k256<>+0x0ec(SB)/4, $0x8cc70208
DATA k256<>+0x0f0(SB)/4, $0x90befffa
DATA k256<>+0x0f4(SB)/4, $0xa4506ceb
DATA k256<>+0x0f8(SB)/4, $0xbef9a3f7
DATA k256<>+0x0fc(SB)/4, $0xc67178f2
GLOBL k256<>(SB), RODATA|NOPTR, $256
