/* Golden-byte generator for pkg/bootstate: the struct below is AOSP's
 * bootloader_control as declared in bootable/recovery
 * bootloader_message.h (packed, GCC >= 4.4 little-endian bit-field
 * allocation). Build: gcc -o gen bootctl_golden.c && ./gen */
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <stddef.h>
struct slot_metadata {
	uint8_t priority : 4;
	uint8_t tries_remaining : 3;
	uint8_t successful_boot : 1;
	uint8_t verity_corrupted : 1;
	uint8_t reserved : 7;
} __attribute__((packed));
struct bootloader_control {
	char slot_suffix[4];
	uint32_t magic;
	uint8_t version;
	uint8_t nb_slot : 3;
	uint8_t recovery_tries_remaining : 3;
	uint8_t merge_status : 3;
	uint8_t reserved0[1];
	struct slot_metadata slot_info[4];
	uint8_t reserved1[8];
	uint32_t crc32_le;
} __attribute__((packed));
_Static_assert(sizeof(struct bootloader_control) == 32, "size");
_Static_assert(offsetof(struct bootloader_control, slot_info) == 12, "slot_info");
_Static_assert(offsetof(struct bootloader_control, crc32_le) == 28, "crc");
/* Same table-free CRC-32 as libboot_control.cpp CRC32(). */
static uint32_t crc32(const uint8_t *p, size_t n) {
	uint32_t c = 0xffffffff;
	for (size_t i = 0; i < n; i++) {
		c ^= p[i];
		for (int j = 0; j < 8; j++) c = (c >> 1) ^ (0xEDB88320 & -(c & 1));
	}
	return ~c;
}
static void emit(const char *name, struct bootloader_control *b) {
	b->crc32_le = crc32((const uint8_t *)b, offsetof(struct bootloader_control, crc32_le));
	const uint8_t *p = (const uint8_t *)b;
	printf("%s ", name);
	for (size_t i = 0; i < sizeof *b; i++) printf("%02x", p[i]);
	printf("\n");
}
int main(void) {
	struct bootloader_control b;
	/* libboot_control InitDefaultBootloaderControl for 2 slots, current _a. */
	memset(&b, 0, sizeof b);
	memcpy(b.slot_suffix, "_a", 3);
	b.magic = 0x42414342; b.version = 1; b.nb_slot = 2;
	for (int i = 0; i < 2; i++) { b.slot_info[i].priority = 7; b.slot_info[i].tries_remaining = 7; }
	b.slot_info[0].successful_boot = 1;
	emit("default_a", &b);
	/* After SetActiveBootSlot(1) from slot 0: b=15/6, a stays. */
	b.slot_info[1].priority = 15; b.slot_info[1].tries_remaining = 6;
	emit("update_b", &b);
	/* Every bit-field at its maximum: shows where each bit lands. */
	memset(&b, 0, sizeof b);
	memcpy(b.slot_suffix, "_d", 3);
	b.magic = 0x42414342; b.version = 1; b.nb_slot = 4;
	b.recovery_tries_remaining = 7; b.merge_status = 7;
	for (int i = 0; i < 4; i++) {
		b.slot_info[i].priority = 15; b.slot_info[i].tries_remaining = 7;
		b.slot_info[i].successful_boot = 1; b.slot_info[i].verity_corrupted = 1;
	}
	emit("all_max", &b);
	/* One field at a time, distinct values. */
	memset(&b, 0, sizeof b);
	b.magic = 0x42414342; b.version = 1; b.nb_slot = 2; b.merge_status = 4; /* MergeStatus::CANCELLED */
	emit("merge_cancelled", &b);
	memset(&b, 0, sizeof b);
	b.magic = 0x42414342; b.version = 1; b.nb_slot = 2; b.recovery_tries_remaining = 5; b.merge_status = 3;
	b.slot_info[1].priority = 9; b.slot_info[1].tries_remaining = 3; b.slot_info[1].verity_corrupted = 1;
	b.slot_info[1].reserved = 0x55; b.reserved0[0] = 0xa5; b.reserved1[0] = 0x11; b.reserved1[7] = 0x88;
	emit("mixed_reserved", &b);
	return 0;
}
