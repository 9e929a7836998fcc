/*
 * test_expand_storm.c — test_heap_storm.c's suite again with expandable segments: threads
 * allocating and freeing on shared and per-thread streams while pages are mapped, moved and
 * released under them.
 */
#define HT_SEGMENTS "expandable_segments:true"
#include "test_heap_storm.c"
