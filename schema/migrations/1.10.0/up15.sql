-- ... with its default subnet.
INSERT INTO vpc_subnet (id, name, description, vpc_id, time_created, time_modified,
                        ipv4_block, ipv6_block)
SELECT gen_random_uuid(), 'default', 'The default subnet for default', v.id, now(), now(),
       '172.30.0.0/22'::INET, set_masklen(v.ipv6_prefix, 64)
FROM vpc v
WHERE v.time_deleted IS NULL AND v.name = 'default'
  AND NOT EXISTS (SELECT 1 FROM vpc_subnet s WHERE s.vpc_id = v.id AND s.time_deleted IS NULL);
